"""Preset files: the shipped ones parse and rank; broken ones are reported by file and field and
skipped; names never become paths."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.hardware_profile import ProfileError, parse_profile
from core.preset_plans import plan_preset
from core.presets import EMBEDDED_KEY, ModelSource, PresetError, match_local, parse_preset, rank
from services.hardware import list_profiles, load_profile
from services.presets_loader import load_presets
from services.yaml_files import DataFileError, load_data_file

ROOT = Path(__file__).resolve().parent.parent
GOOD = {"name": "Mine", "backend": "llama_cpp", "quantization": "Q4_K_M",
        "model": {"repo": "someone/model-GGUF", "file": "*Q4_K_M.gguf"},
        "shape": {"n_layer": 32, "n_embd": 4096, "n_head": 32, "n_head_kv": 8, "n_ff": 14336,
                  "n_vocab": 128256, "n_ctx_train": 131072, "file_gib": 4.6},
        "load": {"n_ctx": 8192, "n_gpu_layers": "auto"}}


def test_shipped_presets_parse():
    presets, errors = load_presets([ROOT / "presets"])
    assert errors == []
    assert {p.quantization for p in presets.values()} >= {"Q4_K_M", "NF4", "GPTQ-4bit", "Q4_1"}
    assert any(p.model.embedded for p in presets.values())


@pytest.mark.parametrize("change,field", [
    ({"colour": "red"}, "colour: Extra inputs"),
    ({"backend": "vllm"}, "backend"),
    ({"model": {"repo": "../../etc"}}, "model.repo"),
    ({"model": {"repo": "a/b", "file": "../x.gguf"}}, "model.file"),
    ({"model": {}}, "model"),
    ({"model": {"path": "x.gguf", "repo": "a/b"}}, "model"),
    ({"load": {"n_ctx": 10 ** 9}}, "load.n_ctx"),
    ({"load": {"kv_type": "q2"}}, "load.kv_type"),
    ({"load": {"nonsense": 1}}, "load.nonsense"),
    ({"sampling": {"temperature": 50}}, "sampling.temperature"),
    ({"shape": {"n_layer": 0}}, "shape"),
])
def test_bad_presets_name_the_field(change, field):
    with pytest.raises(PresetError) as err:
        parse_preset({**GOOD, **change}, "mine.yaml")
    assert str(err.value).startswith("mine.yaml: ") and field in str(err.value), str(err.value)


def test_broken_files_are_skipped_with_messages(tmp_path):
    (tmp_path / "a-good.yaml").write_text(
        "name: Good\nbackend: llama_cpp\nquantization: Q4_0\nmodel: {path: m.gguf}\n")
    (tmp_path / "b-python.yaml").write_text("!!python/object/apply:os.system ['touch PWNED']\n")
    (tmp_path / "c-syntax.yaml").write_text("name: [unclosed\n")
    (tmp_path / "d-list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "e-deep.yaml").write_text("a: " + "[" * 30 + "]" * 30 + "\n")
    (tmp_path / "f-huge.yaml").write_text("name: " + "x" * 300_000 + "\n")
    (tmp_path / "g-binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]  # 9^9 values once the aliases unfold
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (tmp_path / "h-laughs.yaml").write_text("\n".join(laughs) + "\n")
    started = time.monotonic()
    presets, errors = load_presets([tmp_path])
    assert time.monotonic() - started < 5
    assert list(presets) == ["a-good"]
    joined = "\n".join(errors)
    for name in ("b-python", "c-syntax", "d-list", "e-deep", "f-huge", "g-binary", "h-laughs"):
        assert f"{name}.yaml" in joined
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_user_presets_are_namespaced(tmp_path):
    (tmp_path / "smollm2-135m-q4_1.yaml").write_text(
        "name: Mine too\nbackend: llama_cpp\nquantization: Q4_0\nmodel: {path: m.gguf}\n")
    presets, _ = load_presets([ROOT / "presets", tmp_path])
    assert presets["user/smollm2-135m-q4_1"].name == "Mine too"
    assert presets["smollm2-135m-q4_1"].model.embedded


def test_match_local_by_name_only():
    library = [("someone--model-GGUF/model-Q4_K_M.gguf", "/m/someone--model-GGUF/model-Q4_K_M.gguf"),
               ("other.gguf", "/m/other.gguf"), (EMBEDDED_KEY, "/site/smol.gguf")]
    assert match_local(ModelSource(repo="someone/model-GGUF", file="*Q4_K_M.gguf"), library).endswith("Q4_K_M.gguf")
    assert match_local(ModelSource(repo="someone/model-GGUF", file="*Q8_0.gguf"), library) is None
    assert match_local(ModelSource(path="other.gguf"), library) == "/m/other.gguf"
    assert match_local(ModelSource(path="/etc/passwd"), library) is None
    assert match_local(ModelSource(embedded=True), library) == "/site/smol.gguf"


def test_match_local_stays_inside_the_presets_repository_folder():
    library = [("Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "/m/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf"),
               ("other--Llama-GGUF/Llama-Q4_K_M.gguf", "/m/other--Llama-GGUF/Llama-Q4_K_M.gguf"),
               ("mistralai--Mistral-7B", "/m/mistralai--Mistral-7B"),
               ("mistralai--Mistral-7B-v2/x.gguf", "/m/mistralai--Mistral-7B-v2/x.gguf")]
    # A file with a similar name elsewhere (another repository, the top folder) is not the preset's model.
    assert match_local(ModelSource(repo="bartowski/Llama-GGUF", file="*Q4_K_M.gguf"), library) is None
    assert match_local(ModelSource(repo="bartowski/Llama-GGUF"), library) is None
    # transformers: only the model folder itself, never a GGUF file.
    assert match_local(ModelSource(repo="mistralai/Mistral-7B"), library, "transformers") == "/m/mistralai--Mistral-7B"
    assert match_local(ModelSource(repo="someone/Qwen2.5-0.5B"), library, "transformers") is None
    assert match_local(ModelSource(repo="mistralai/Mistral-7B"), library) is None


def test_ranking_orders_by_fit_then_speed():
    presets, _ = load_presets([ROOT / "presets"])
    hw = load_profile(ROOT / "profiles" / "rtx3060-12g.yaml")
    entries = rank([plan_preset(k, p, hw, [], lambda path: None) for k, p in presets.items()])
    planned = [e for e in entries if e.plan is not None]
    fits = [e.plan.fit for e in planned]
    order = {"full_gpu": 0, "partial": 1, "cpu_only": 2, "no_fit": 3}
    assert fits == sorted(fits, key=order.get)
    seventy = next(e for e in entries if "70b" in e.key)
    assert seventy.plan.fit == "partial" and not seventy.exact_shape
    assert any("planned from the preset" in r for r in seventy.plan.reasons)


def test_profiles_parse_and_bad_profiles_name_the_field(tmp_path):
    found, errors = list_profiles(ROOT / "profiles")
    assert errors == [] and set(found) >= {"rtx3060-12g", "rtx3060ti-8g", "rtx4090-24g", "cpu-16g"}
    assert found["rtx3060-12g"].gpus[0].total_bytes == 12 << 30 and found["cpu-16g"].gpus == ()
    with pytest.raises(ProfileError, match="x.yaml: gpus.0.vram_gib"):
        parse_profile({"name": "x", "ram_gib": 8, "cpu_cores": 4, "ram_bandwidth_gb_s": 20,
                       "gpus": [{"name": "g", "vram_gib": -1, "bandwidth_gb_s": 100}]}, "x.yaml")
    with pytest.raises(ProfileError, match="free_vram_gib is larger"):
        parse_profile({"name": "x", "ram_gib": 8, "cpu_cores": 4, "ram_bandwidth_gb_s": 20,
                       "gpus": [{"name": "g", "vram_gib": 8, "free_vram_gib": 9, "bandwidth_gb_s": 100}]}, "x.yaml")
    (tmp_path / "bad.yaml").write_text("name: bad\nram_gib: 8\n")
    _, errors = list_profiles(tmp_path)
    assert errors and "bad.yaml" in errors[0] and "cpu_cores" in errors[0]


def test_yaml_loader_refuses_symlinks(tmp_path):
    target = tmp_path / "real.yaml"
    target.write_text("a: 1\n")
    (tmp_path / "link.yaml").symlink_to(target)
    with pytest.raises(DataFileError, match="symbolic links"):
        load_data_file(tmp_path / "link.yaml")


def test_only_safe_load_is_used_anywhere():
    """Lint: no yaml.load / unsafe_load / FullLoader in the code base."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        if ".venv" in path.parts or path.name == "test_presets.py":
            continue
        text = path.read_text()
        if "yaml.load(" in text or "unsafe_load" in text or "FullLoader" in text or "yaml.Loader" in text:
            offenders.append(str(path))
    assert offenders == []
