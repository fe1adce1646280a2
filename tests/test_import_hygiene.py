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


# Layers, imports go down only: ui/api -> backends -> services -> core (cli wires them all).
LAYERS = {"core": 0, "services": 1, "backends": 2, "ui": 3, "api": 3, "cli": 4}


def _runtime_nodes(tree):
    """Every node but those under ``if TYPE_CHECKING:`` (type names only, never imported at run time)."""
    import ast

    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(path):
    import ast

    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno


def layer_violations(root) -> list[str]:
    """Every import (module-level or inside a function) that goes up a layer or sideways between layers."""
    out = []
    for top, rank in LAYERS.items():
        for path in sorted((root / top).rglob("*.py")):
            for module, line in _imports(path):
                target = module.split(".")[0]
                if target in LAYERS and target != top and LAYERS[target] >= rank:
                    out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


def cli_cycles(root) -> list[str]:
    """cli modules must not import each other in a circle."""
    graph = {p.stem: {m.split(".")[1] for m, _ in _imports(p) if m.startswith("cli.") and m.count(".") == 1}
             for p in (root / "cli").glob("*.py")}
    cycles = []
    for a, targets in graph.items():
        for b in targets:
            if a in graph.get(b, ()) and a < b:
                cycles.append(f"cli.{a} <-> cli.{b}")
    return cycles


def test_imports_go_down_the_layers_only():
    import pathlib

    root = pathlib.Path(ROOT)
    assert layer_violations(root) == []
    assert cli_cycles(root) == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    for top in LAYERS:
        (tmp_path / top).mkdir()
    (tmp_path / "services" / "bad.py").write_text("def f():\n    from backends.base import LoadSpec\n")
    (tmp_path / "ui" / "x.py").write_text("import api.openai_routes\n")
    (tmp_path / "services" / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                    "    from backends.base import LoadSpec\n")
    (tmp_path / "cli" / "a.py").write_text("from cli.b import x\n")
    (tmp_path / "cli" / "b.py").write_text("from cli.a import y\n")
    assert layer_violations(tmp_path) == ["services/bad.py:2 imports backends.base", "ui/x.py:1 imports api.openai_routes"]
    assert cli_cycles(tmp_path) == ["cli.a <-> cli.b"]
