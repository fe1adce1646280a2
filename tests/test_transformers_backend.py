"""The transformers backend beyond the shared contract: bad model folders refused with a message
before any weights load, a hostile or missing chat template, NF4 without bitsandbytes, GPTQ with and
without its optional extra, the static-cache + torch.compile path, and the offload device map.
Real worker processes and the test checkpoint (tests/hf_checkpoint.py); no test doubles."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading

import pytest

from core.hf_memory import RuntimeOverhead

from backends.base import LoadSpec, ModelLoadError, TemplateError, UnsupportedRequestError
from backends.worker_client import WorkerBackend
from core.options import LoadOptions, SamplingOptions, TransformersLoadOptions
from tests.conftest import ESCAPE_TEMPLATE, ROOT

pytestmark = pytest.mark.real_model

GREEDY = SamplingOptions(temperature=0.0, max_tokens=24, seed=1)
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
HAS_GPTQ = all(importlib.util.find_spec(m) is not None for m in ("optimum", "gptqmodel"))
NO_GPTQ_REASON = ("gptqmodel + optimum are not installed: GPTQ is an optional extra (requirements-gptq.txt) "
                  "because gptqmodel pulls a CUDA build of torch")


def variant(checkpoint, root, name, config_update=None, drop=(), files=None):
    """A copy of the test checkpoint (weights linked, not copied) with some files changed."""
    out = root / name
    out.mkdir()
    for item in checkpoint.iterdir():
        if item.name in drop:
            continue
        if item.suffix == ".safetensors":
            (out / item.name).symlink_to(item)
        else:
            shutil.copy(item, out / item.name)
    if config_update:
        config = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, **config_update}))
    for fname, text in (files or {}).items():
        (out / fname).write_text(text)
    return out


def spec(path, **options) -> LoadSpec:
    return LoadSpec(str(path), TransformersLoadOptions(**{"n_ctx": 1024, **options}), backend="transformers")


@pytest.fixture(scope="module")
def backend():
    b = WorkerBackend("transformers")
    yield b
    b.unload()


@pytest.fixture(scope="module")
def bad_folders(hf_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-bad")
    garbage = b"\x00" * 64  # weights that would fail differently if anything tried to read them
    pickle_only = variant(hf_checkpoint, root, "pickle-only", drop=("model.safetensors",))
    (pickle_only / "pytorch_model.bin").write_bytes(garbage)
    remote = variant(hf_checkpoint, root, "remote-code", {"auto_map": {"AutoModelForCausalLM": "evil.Evil"}},
                     drop=("model.safetensors",))
    (remote / "model.safetensors").write_bytes(garbage)
    (remote / "evil.py").write_text(f"open({str(root / 'remote-code-ran')!r}, 'w').close()\n")
    vit = variant(hf_checkpoint, root, "unsupported-arch", {"model_type": "vit", "architectures": ["ViTForImageClassification"]},
                   drop=("model.safetensors",))
    (vit / "model.safetensors").write_bytes(garbage)
    return {"pickle": pickle_only, "remote": remote, "vit": vit, "root": root}


@pytest.mark.parametrize("key,message", [
    ("pickle", "only pickle weights \\(pytorch_model.bin\\).*only safetensors"),
    ("remote", "needs its own Python code.*trust_remote_code=False"),
    ("vit", "Architecture vit \\(ViTForImageClassification\\) is not supported by the installed transformers"),
])
def test_bad_folders_are_refused_before_weights_load(backend, bad_folders, key, message):
    with pytest.raises(ModelLoadError, match=message):
        backend.load(spec(bad_folders[key]))
    assert backend.info is None
    assert not (bad_folders["root"] / "remote-code-ran").exists()


def test_context_longer_than_trained_is_refused(backend, hf_checkpoint):
    with pytest.raises(ModelLoadError, match="more than this model was trained for \\(8192\\)"):
        backend.load(spec(hf_checkpoint, n_ctx=16384))


def test_hostile_tokenizer_template_is_refused_without_side_effects(backend, hf_checkpoint, tmp_path):
    canary = tmp_path / "canary"
    hostile = variant(hf_checkpoint, tmp_path, "hostile",
                      files={"chat_template.jinja": ESCAPE_TEMPLATE.replace("CANARY", str(canary))})
    with pytest.raises(TemplateError, match="sandbox"):
        backend.load(spec(hostile, quantization="bf16"))
    assert not canary.exists()


def test_model_without_template_uses_chatml_fallback(backend, hf_checkpoint, tmp_path):
    bare = variant(hf_checkpoint, tmp_path, "no-template", drop=("chat_template.jinja",))
    info = backend.load(spec(bare, quantization="bf16"))
    assert info.template_origin == "chatml-fallback"
    reply = "".join(backend.stream_chat(CAPITAL, GREEDY, threading.Event()))
    assert reply and "<|im_end|>" not in reply
    backend.unload()


def test_logprobs_are_refused_through_the_worker(backend, hf_checkpoint):
    backend.load(spec(hf_checkpoint, quantization="bf16"))
    with pytest.raises(UnsupportedRequestError, match="logprobs cannot be reported by the transformers backend"):
        list(backend.stream_chat(CAPITAL, GREEDY, threading.Event(), logprobs=0))
    assert "".join(backend.stream_chat(CAPITAL, GREEDY, threading.Event()))  # the worker stays usable
    backend.unload()


def test_nf4_without_bitsandbytes_is_explained_before_loading(hf_checkpoint):
    probe = (
        "import sys; sys.modules['bitsandbytes'] = None  # what a machine without it sees\n"
        "from backends.transformers_engine import TransformersEngine\n"
        "from backends.base import LoadSpec, ModelLoadError\n"
        "from core.options import TransformersLoadOptions\n"
        "engine = TransformersEngine()\n"
        "try:\n"
        f"    engine.load(LoadSpec({str(hf_checkpoint)!r}, TransformersLoadOptions(quantization='nf4'), "
        "backend='transformers'))\n"
        "except ModelLoadError as exc:\n"
        "    print('REFUSED', exc, 'MODEL', engine.model)\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "REFUSED NF4 (4-bit) needs bitsandbytes, which is not installed" in out.stdout, out.stderr[-2000:]
    assert "pip install 'bitsandbytes>=0.50'" in out.stdout and "MODEL None" in out.stdout


@pytest.mark.skipif(HAS_GPTQ, reason="gptqmodel is installed: the real GPTQ test below runs instead")
def test_gptq_without_the_extra_says_how_to_enable_it(backend, hf_checkpoint, tmp_path):
    gptq = variant(hf_checkpoint, tmp_path, "gptq", {"quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 64, "desc_act": False, "sym": True}})
    with pytest.raises(ModelLoadError, match="requirements-gptq.txt.*gptqmodel pulls a CUDA build of torch"):
        backend.load(spec(gptq, quantization="gptq"))
    with pytest.raises(ModelLoadError, match="This is a GPTQ checkpoint: load it with quantization gptq"):
        backend.load(spec(gptq, quantization="nf4"))


GPTQ_BUILD = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig
src, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(src)
config = GPTQConfig(bits=4, group_size=64, dataset=["The capital of France is Paris. " * 20] * 8, tokenizer=tok)
model = AutoModelForCausalLM.from_pretrained(src, quantization_config=config, device_map="cpu")
model.save_pretrained(out)
tok.save_pretrained(out)
"""


@pytest.mark.skipif(not HAS_GPTQ, reason=NO_GPTQ_REASON)
def test_gptq_checkpoint_loads_and_chats(backend, hf_checkpoint, tmp_path):
    out = tmp_path / "gptq-4bit"
    subprocess.run([sys.executable, "-c", GPTQ_BUILD, str(hf_checkpoint), str(out)], check=True, timeout=1200)
    info = backend.load(spec(out, quantization="gptq"))
    assert info.backend == "transformers"
    deltas = list(backend.stream_chat(CAPITAL, GREEDY, threading.Event()))
    assert deltas
    backend.unload()


def test_static_cache_and_compile_path_answers_like_the_eager_one(backend, hf_checkpoint):
    """On this CPU the compiled path is not faster (bench/gpu_transformers.py measures it on the GPU);
    here it must produce a correct answer through the worker and report its KV cache."""
    eager = backend.load(spec(hf_checkpoint, quantization="nf4"))
    eager_reply = "".join(backend.stream_chat(CAPITAL, GREEDY, threading.Event()))
    info = backend.load(spec(hf_checkpoint, quantization="nf4", compile=True))
    assert "static" in info.kv_type and "compiled" in info.kv_type and "static" not in eager.kv_type
    kv = [b for b in info.buffers if b.kind == "KV"]
    assert kv and kv[0].mib == pytest.approx(2 * 30 * 3 * 64 * 1024 * 2 / 2**20)  # the whole context, bf16
    stream = backend.stream_chat(CAPITAL, GREEDY, threading.Event())
    reply = "".join(stream)
    assert "Paris" in eager_reply and "Paris" in reply, (eager_reply, reply)
    assert stream.stats.completion_tokens > 3 and stream.stats.decode_tokens_per_s > 0
    backend.unload()


DEVICE_MAP_PROBE = """
import json, sys
from accelerate import init_empty_weights
from accelerate.utils import check_device_map
from transformers import AutoConfig, AutoModelForCausalLM
from backends.hf_loading import full_device_map
from core.hf_memory import HfMemorySettings, estimate_memory
from services.hf_repo import inspect_repo
repo = inspect_repo(sys.argv[1])
est = estimate_memory(repo.dims, repo.tensors, HfMemorySettings("nf4", n_ctx=1024), gpu_budget_bytes=int(sys.argv[2]))
device_map = full_device_map(repo, est.device_map)
with init_empty_weights():
    meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1]))
check_device_map(meta, device_map)  # raises if a parameter has no device
print(json.dumps({"gpu_blocks": est.gpu_blocks, "map": device_map}))
"""


def test_offload_device_map_covers_every_module(hf_checkpoint):
    """The explicit map for a partial offload (GPU 0 + CPU) as accelerate checks it; the budget puts
    about half of the blocks on the GPU."""
    budget = RuntimeOverhead().cuda_context_bytes + 110 * 2**20  # CUDA context + the fixed part and some blocks
    out = subprocess.run([sys.executable, "-c", DEVICE_MAP_PROBE, str(hf_checkpoint), str(budget)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    device_map, n_gpu = result["map"], result["gpu_blocks"]
    assert 0 < n_gpu < 30
    assert [device_map[f"model.layers.{i}"] for i in range(30)] == [0] * n_gpu + ["cpu"] * (30 - n_gpu)
    assert device_map["model.embed_tokens"] == 0 and device_map["model.rotary_emb"] == 0


def test_options_and_spec_serialisation():
    s = LoadSpec("/m", backend="transformers")
    assert isinstance(s.options, TransformersLoadOptions) and s.options.quantization == "nf4"
    assert LoadSpec.from_dict(s.to_dict()) == s
    assert LoadSpec.from_dict(LoadSpec("/m.gguf", LoadOptions(n_ctx=512)).to_dict()).options.n_ctx == 512
    with pytest.raises(TypeError, match="takes TransformersLoadOptions"):
        LoadSpec("/m", LoadOptions(n_ctx=512), backend="transformers")
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="nf4 and int8 only"):
        TransformersLoadOptions(quantization="bf16", skip_modules=("lm_head",))
    with pytest.raises(ValidationError, match="at most 16"):
        TransformersLoadOptions(skip_modules=tuple(f"m{i}" for i in range(17)))
    with pytest.raises(ValidationError, match="not a module name"):
        TransformersLoadOptions(skip_modules=("lm_head; import os",))
    with pytest.raises(ValidationError):
        TransformersLoadOptions(quantization="q4_k_m")
    assert TransformersLoadOptions(skip_modules=("mlp.down_proj",)).skip_modules == ("mlp.down_proj",)
