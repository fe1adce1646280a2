"""``python app.py download``: against the local Hub (HF_ENDPOINT), a progress bar, the best-fitting
GGUF when no --file is given, resume after an interruption, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.fake_hub import TOKEN
from tests.hub_repos import GATED, PICKLE, SAFETENSORS, TINY


def download(hub, data_dir, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(data_dir / "hf-home"), **(env or {})}
    environment.pop("HF_TOKEN", None)
    environment.update(env or {})
    return subprocess.run([sys.executable, "app.py", "download", *args, "--data-dir", str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env=environment)


def test_download_a_file_with_a_progress_bar(fake_hub, tmp_path):
    out = download(fake_hub, tmp_path, TINY, "--file", "*Q4_0*")
    assert out.returncode == 0, out.stderr
    mib = f"{fake_hub.file(TINY, 'tiny-Q4_0.gguf').size / (1 << 20):.1f} MiB"
    assert "[" + "#" * 30 + f"] Done: {mib} of {mib}" in out.stderr
    target = tmp_path / "models" / "test-org--Tiny-GGUF" / "tiny-Q4_0.gguf"
    assert f"Installed {target} (verified" in out.stdout and target.stat().st_size == fake_hub.file(
        TINY, "tiny-Q4_0.gguf").size


def test_without_file_the_best_fitting_gguf_is_chosen_and_a_partial_is_resumed(fake_hub, tmp_path):
    f = fake_hub.file(TINY, "tiny-Q8_0.gguf")
    fake_hub.cut_once[f.sha256] = f.size // 2
    fake_hub.down_after_cut = True  # the retry after the cut fails: the first run ends with a partial file
    try:
        first = download(fake_hub, tmp_path, TINY)
    finally:
        fake_hub.down_after_cut = False
        fake_hub.cut_done.clear()
    assert first.returncode == 1 and "partial file is kept" in first.stderr
    assert "Chose tiny-Q8_0" in first.stdout and "planned from the headers" in first.stdout
    fake_hub.reset_counters()
    second = download(fake_hub, tmp_path, TINY)
    assert second.returncode == 0, second.stderr
    assert "resumed from an earlier attempt" in second.stdout
    ranges = [e[3] for e in fake_hub.log if e[2] == f"/cdn/{f.sha256}"]
    header_reads = [r for r in ranges if not r.endswith("-")]  # the second run plans again from the headers
    header_bytes = sum(min(int(b), f.size - 1) - int(a) + 1 for a, b in (r[6:].split("-") for r in header_reads))
    assert [r for r in ranges if r.endswith("-")] == [f"bytes={f.size // 2}-"]
    assert fake_hub.served_bytes(TINY, "tiny-Q8_0.gguf") == f.size - f.size // 2 + header_bytes  # 0 re-fetched


def test_transformers_repos_and_refusals(fake_hub, tmp_path):
    out = download(fake_hub, tmp_path, SAFETENSORS)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "models" / "test-org--Tiny-Safetensors" / "model.safetensors").is_file()
    assert not (tmp_path / "models" / "test-org--Tiny-Safetensors" / "pytorch_model.bin").exists()
    out = download(fake_hub, tmp_path, PICKLE)
    assert out.returncode == 1 and "only pickle weights" in out.stderr


def test_gated_repos_use_the_token_from_the_environment_and_never_print_it(fake_hub, tmp_path):
    out = download(fake_hub, tmp_path, GATED)
    error = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and error.startswith("fitchat: error: test-org/Gated-GGUF is gated") and "HF_TOKEN" in error
    out = download(fake_hub, tmp_path, GATED, env={"HF_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr


@pytest.mark.parametrize("args,message", [(["../etc"], "not a repository id"), ([TINY, "--file", "../x"], "--file"),
                                          ([TINY, "--file", "*Q9_9*"], "matches no GGUF file"),
                                          ([SAFETENSORS, "--file", "*"], "applies to GGUF repos"), ([], "repo")])
def test_bad_input_is_one_line_and_exit_2(fake_hub, tmp_path, args, message):
    out = download(fake_hub, tmp_path, *args)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
