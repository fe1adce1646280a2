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

# llama.cpp's own tool on the same file, text, context and batch: tools/perplexity of the llama.cpp
# sources that llama-cpp-python 0.3.36 vendors, built for CPU (cmake -DGGML_NATIVE=off -DLLAMA_CURL=off;
# cmake --build . --target llama-perplexity), run on 2026-12-03 (docs/BENCHMARKS.md, "Quality check"):
#   llama-perplexity -m SmolLM2-135M-Instruct.Q4_1.gguf -f assets/quality/gpl-3.0.txt -c 512 -b 512 --chunks 4 -t 2
#   -> [1]16.3211,[2]17.7185,[3]16.3002,[4]18.2554,  Final estimate: PPL = 18.2554 +/- 1.54930
LLAMA_PERPLEXITY_4_CHUNKS = (18.2554, 1.54930)


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


def test_perplexity_equals_llama_cpp_perplexity_tool(embedded_model, tmp_path):
    manager = ModelManager()
    try:
        run = run_quality(manager, _spec(embedded_model), QualityStore(tmp_path), QualityOptions(max_windows=4))
    finally:
        manager.close()
    ppl, err = LLAMA_PERPLEXITY_4_CHUNKS
    assert run.result.complete and run.result.windows_done == 4 and run.result.scored_tokens == 4 * 255
    assert run.result.ppl == pytest.approx(ppl, rel=0.005)
    assert run.result.ppl_error == pytest.approx(err, rel=0.01)


TORCH_PPL = r"""
import json, math, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, text_file, window, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
text = open(text_file, encoding="utf-8").read()
text = text[:-1] if text.endswith("\n") else text
ids = tok(text, add_special_tokens=False).input_ids
bos = tok.bos_token_id if tok.bos_token_id is not None and tok("a").input_ids[:1] == [tok.bos_token_id] else None
if bos is not None:
    ids = [bos] + ids
nll, count = 0.0, 0
for i in range(n):
    chunk = ids[i * window:(i + 1) * window]
    if bos is not None:
        chunk = [bos] + chunk[1:]
    with torch.no_grad():
        logits = model(torch.tensor([chunk])).logits[0].float()
    first = window // 2
    logp = torch.log_softmax(logits[first:window - 1], dim=-1)
    target = torch.tensor(chunk[first + 1:])
    nll += float(-logp[torch.arange(len(target)), target].sum())
    count += len(target)
print(json.dumps({"ppl": math.exp(nll / count), "count": count}))
"""


def test_transformers_perplexity_agrees_with_plain_torch(hf_checkpoint, tmp_path):
    from core.options import TransformersLoadOptions
    from services.quality import quality_text_path

    spec = LoadSpec(str(hf_checkpoint), TransformersLoadOptions(quantization="bf16", n_ctx=512, n_threads=2),
                    backend="transformers", display_name="hf")
    manager = ModelManager()
    try:
        run = run_quality(manager, spec, QualityStore(tmp_path), QualityOptions(window=128, max_windows=2))
    finally:
        manager.close()
    out = subprocess.run([sys.executable, "-c", TORCH_PPL, str(hf_checkpoint), str(quality_text_path()), "128", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    plain = json.loads(out.stdout.strip().splitlines()[-1])
    assert run.result.complete and run.result.scored_tokens == plain["count"] == 126
    assert run.result.ppl == pytest.approx(plain["ppl"], rel=0.005)
