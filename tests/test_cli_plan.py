"""``python app.py plan``: table, JSON, what-if machines, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "app.py", "plan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_json_for_the_embedded_model(embedded_model):
    out = plan(str(embedded_model), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in ("n_gpu_layers", "n_ctx", "kv_type", "vram_bytes", "ram_bytes", "tokens_per_s", "fit"):
        assert key in data
    assert data["fit"] == "cpu_only" and data["n_ctx"] == 4096
    assert any("dry run" in r for r in data["reasons"])  # compute buffers from llama.cpp itself


def test_table_for_a_profile_and_a_given_configuration(embedded_model):
    out = plan(str(embedded_model), "--profile", "rtx3060-12g")
    assert out.returncode == 0 and "Full GPU" in out.stdout and "GPU " in out.stdout
    out = plan(str(embedded_model), "--profile", "rtx3060-12g", "--n-gpu-layers", "10", "--ctx", "2048",
               "--kv", "q8_0", "--json")
    data = json.loads(out.stdout)
    assert (data["n_gpu_layers"], data["n_ctx"], data["kv_type"], data["fit"]) == (10, 2048, "q8_0", "partial")


def test_what_if_vram_and_context_goal(embedded_model):
    data = json.loads(plan(str(embedded_model), "--vram-gib", "2", "--ram-gib", "8", "--goal", "context",
                           "--json").stdout)
    assert data["n_ctx"] == 8192 and data["fit"] == "full_gpu"


def test_preset_by_name():
    out = plan("llama31-70b-instruct-q4_k_m-partial", "--profile", "rtx3060-12g")
    assert out.returncode == 0 and "Partial" in out.stdout


def test_nothing_fits_exits_1(embedded_model):
    out = plan("llama31-70b-instruct-q4_k_m-partial", "--profile", "cpu-16g")
    assert out.returncode == 1 and "Does not fit" in out.stdout


@pytest.mark.parametrize("args,expected", [
    (["/nonexistent.gguf"], "model file not found"),
    (["nosuchpreset"], "no preset or GGUF file"),
    (["{model}", "--profile", "nosuch"], "--profile: no such profile"),
    (["{model}", "--vram-gib", "-3"], "--vram-gib must be a positive"),
    (["{model}", "--ctx", "5"], "--ctx must be"),
    (["{model}", "--kv", "q9"], "invalid choice"),
    (["{truncated}"], "truncated"),
    (["{not_gguf}"], "not a GGUF file"),
])
def test_bad_input_one_line(args, expected, embedded_model, bad_models):
    args = [a.format(model=embedded_model, truncated=bad_models["truncated"], not_gguf=bad_models["not_gguf"])
            for a in args]
    out = plan(*args)
    assert out.returncode == 2
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in out.stderr
