"""Importing the app, the UI and the core must not pull in any heavy runtime."""
import json
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ["torch", "transformers", "llama_cpp", "bitsandbytes", "accelerate"]


def imported_after(code: str) -> set[str]:
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_app_ui_and_core_import_no_heavy_runtime():
    mods = imported_after("import app, ui, ui.chat_tab, core, core.options, core.chat_template, "
                          "core.gguf_header, backends.manager, backends.worker_client, cli.serve, cli.launch")
    assert not {m for m in mods if m.split(".")[0] in HEAVY}


def test_core_is_pure():
    import pathlib

    mods = imported_after("import " + ", ".join(
        f"core.{p.stem}" for p in sorted(pathlib.Path(ROOT, "core").glob("*.py")) if p.stem != "__init__"))
    forbidden = HEAVY + ["gradio", "pynvml", "psutil", "huggingface_hub", "numpy"]
    assert not {m for m in mods if m.split(".")[0] in forbidden}


def test_core_reads_no_environment_and_keeps_no_globals():
    import ast
    import pathlib

    for path in pathlib.Path(ROOT, "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path
        for node in ast.walk(tree):
            assert not isinstance(node, ast.Global), f"{path}: global statement"


def test_importing_app_parses_no_arguments():
    out = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x','--bogus']; import app; print('ok')"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok"
