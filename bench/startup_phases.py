"""Where the app's start-up time goes, phase by phase, in fresh processes (issue 2's cold start).

    .venv/bin/python bench/startup_phases.py [--runs 3] [--out FILE]

Each run is a new interpreter that times: ``import gradio``; importing FitChat's UI and launcher;
making the app context; ``build_app`` (every tab); and ``launch`` (to a served port). No model is
loaded: the worker starts after the server answers, so it is not part of the cold start.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
t0 = time.perf_counter()
import gradio  # noqa: F401
t1 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from cli.launch import make_context
from core.settings import AppSettings
from ui import CSS, build_app
t2 = time.perf_counter()
settings = AppSettings(data_dir=Path(tempfile.mkdtemp()), port=int(sys.argv[2]), load_default_model=False)
ctx = make_context(settings)
t3 = time.perf_counter()
app = build_app(ctx)
t4 = time.perf_counter()
app.queue()
app.launch(server_name="127.0.0.1", server_port=settings.port, prevent_thread_lock=True, quiet=True, css=CSS)
t5 = time.perf_counter()
app.close()
print(json.dumps({"import_gradio": t1 - t0, "import_fitchat": t2 - t1, "context": t3 - t2,
                  "build_app": t4 - t3, "launch": t5 - t4}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=7997)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(args.port)], capture_output=True,
                             text=True, check=True, cwd=ROOT,
                             env=dict(os.environ, GRADIO_ANALYTICS_ENABLED="False"))
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    report = {"summary_median_s": summary, "runs": runs}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
