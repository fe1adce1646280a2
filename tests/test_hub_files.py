"""The pure side of the Models tab: names from the Hub, GGUF grouping, what a transformers download
takes, the best-fitting choice, disk space and progress maths."""
from __future__ import annotations

import math

import pytest

from core.hub_files import (HubFile, HubNameError, check_glob, check_hub_path, check_query, check_repo_id,
                            choose_best, disk_space_problem, group_gguf, hub_file, local_name, quant_label,
                            transformers_files)
from core.plan import FIT_LABELS, MemoryBreakdown, Plan
from core.transfer import advance, describe, format_eta, start, text_bar

SHA = "a" * 64
OID = "b" * 40


@pytest.mark.parametrize("name", ["../evil.gguf", "a/../../b.gguf", "/etc/passwd", "C:/x.gguf", "c:x.gguf",
                                  "..\\x.gguf", "\\\\host\\share\\x.gguf", "//host/share/x.gguf", "a//b.gguf",
                                  "./a.gguf", "a/./b.gguf", "a\x00b.gguf", "a\nb.gguf", "x.gguf::$DATA", "",
                                  "a" * 600, None, 3])
def test_hostile_hub_file_names_are_refused(name):
    with pytest.raises(HubNameError):
        check_hub_path(name)


def test_plain_names_pass_and_keep_their_last_part_locally():
    assert check_hub_path("Q4_K_M/model-Q4_K_M-00001-of-00002.gguf") == "Q4_K_M/model-Q4_K_M-00001-of-00002.gguf"
    assert local_name("Q4_K_M/model-Q4_K_M-00001-of-00002.gguf") == "model-Q4_K_M-00001-of-00002.gguf"
    with pytest.raises(HubNameError, match="hidden"):
        local_name("sub/.bashrc")


@pytest.mark.parametrize("repo", ["../x", "a/b/c", "a", "/a/b", "a/..", "a/b\x00", "a /b", "-a/b", "a/b.." * 30, None])
def test_bad_repo_ids_are_refused(repo):
    with pytest.raises(HubNameError):
        check_repo_id(repo)


def test_repo_ids_globs_and_queries_that_pass():
    assert check_repo_id(" bartowski/Llama-3.2-1B-Instruct-GGUF ") == "bartowski/Llama-3.2-1B-Instruct-GGUF"
    assert check_glob("*Q4_K_M*.gguf") == "*Q4_K_M*.gguf"
    for bad in ("../x.gguf", "sub/x.gguf", "a\\b", ""):
        with pytest.raises(HubNameError):
            check_glob(bad)
    assert check_query("  llama   8b ") == "llama 8b" and check_query(None) == ""
    with pytest.raises(HubNameError):
        check_query("x" * 101)


def test_listing_entries_need_a_valid_size_and_digest():
    assert hub_file("a.gguf", 10, SHA.upper()).sha256 == SHA
    for size, sha, oid in ((-1, SHA, None), (True, SHA, None), (10, "sha256:../../x", None), (10, None, None),
                           (10, None, "xyz")):
        with pytest.raises(HubNameError):
            hub_file("a.gguf", size, sha, oid)


@pytest.mark.parametrize("name,label", [
    ("Llama-3.1-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"), ("model.q8_0.gguf", "Q8_0"), ("x-IQ4_XS.gguf", "IQ4_XS"),
    ("x-UD-Q4_K_XL-00001-of-00002.gguf", "UD-Q4_K_XL"), ("x-bf16.gguf", "BF16"), ("x-fp16.gguf", "F16"),
    ("x-Q4_0_4_4.gguf", "Q4_0_4_4"), ("no-quant-here.gguf", "")])
def test_quant_labels_come_from_file_names(name, label):
    assert quant_label(name) == label


def f(path: str, size: int = 100) -> HubFile:
    return HubFile(path, size, SHA)


def test_gguf_files_are_grouped_into_models_with_split_shards_as_one():
    files = [f("README.md", 5), f("m-Q4_K_M.gguf", 400), f("m-Q8_0.gguf", 800),
             f("F16/m-F16-00002-of-00003.gguf", 300), f("F16/m-F16-00001-of-00003.gguf", 300),
             f("F16/m-F16-00003-of-00003.gguf", 100), f("Q2/m-Q2_K-00001-of-00002.gguf", 90),
             f("mmproj-m-F16.gguf", 50), f("other/m-Q4_K_M.gguf", 401)]
    models, notes = group_gguf(files)
    assert [(m.key, m.quant, m.size, len(m.files)) for m in models] == [
        ("m-Q4_K_M", "Q4_K_M", 400, 1), ("F16/m-F16", "F16", 700, 3), ("m-Q8_0", "Q8_0", 800, 1)]
    assert [x.path for x in models[1].files] == [f"F16/m-F16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert any("Q2/m-Q2_K: only 1 of 2 shards" in n for n in notes)
    assert any("mmproj" in n and "vision projector" in n for n in notes)
    assert any("other/m-Q4_K_M" in n and "same name" in n for n in notes)


def test_transformers_downloads_take_safetensors_config_and_tokenizer_only():
    files = [f("config.json"), f("tokenizer.json"), f("README.md"), f("model-00001-of-00002.safetensors"),
             f("model-00002-of-00002.safetensors"), f("consolidated.safetensors"), f("pytorch_model.bin"),
             f("original/model.safetensors"), f("modeling_x.py"), f("model.safetensors.index.json")]
    shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
    got = transformers_files(files, shards)
    assert not got.refusal
    assert sorted(x.path for x in got.files) == sorted(["config.json", "tokenizer.json", "model.safetensors.index.json",
                                                        *shards])
    assert transformers_files(files, shards | {"missing.safetensors"}).refusal.endswith("not in the repo.")
    pickle_only = transformers_files([f("config.json"), f("pytorch_model.bin")], repo="o/n")
    assert "only pickle weights (pytorch_model.bin)" in pickle_only.refusal and not pickle_only.files
    assert "no config.json" in transformers_files([f("model.safetensors")]).refusal


def plan(fit: str, speed: float) -> Plan:
    return Plan(fit=fit, backend="llama_cpp", n_layer=32, n_gpu_layers=0, n_ctx=4096, kv_type="f16", flash_attn=True,
                gpu=MemoryBreakdown(), cpu=MemoryBreakdown(), tokens_per_s=speed)


def test_the_best_fit_is_the_largest_file_of_the_best_class_that_keeps_half_the_speed():
    options = [("Q2_K", plan("full_gpu", 60), 3), ("Q4_K_M", plan("full_gpu", 40), 5),
               ("Q8_0", plan("full_gpu", 25), 8), ("F16", plan("partial", 6), 16), ("huge", plan("no_fit", 0), 99),
               ("unknown", None, 1)]
    assert choose_best(options) == "Q4_K_M"       # Q8_0 is under half of Q2_K's speed
    assert choose_best(options, min_speed_share=0.4) == "Q8_0"
    assert choose_best([("F16", plan("partial", 6), 16), ("Q8", plan("cpu_only", 9), 8)]) == "F16"
    assert choose_best([("huge", plan("no_fit", 0), 99), ("x", None, 1)]) is None
    assert set(FIT_LABELS) == {"full_gpu", "partial", "cpu_only", "no_fit"}


def test_disk_space_message_names_what_is_needed_and_free():
    assert disk_space_problem(100, 1000, 10, "/m") == ""
    message = disk_space_problem(5 << 30, 1 << 30, 512 << 20, "/models")
    assert "Not enough disk space in /models" in message and "5.00 GiB" in message and "512.0 MiB" in message
    assert "1.00 GiB is free" in message and "nothing was downloaded" in message


def test_progress_speed_eta_and_text():
    p = start(total=1000 << 20, resumed=200 << 20, n_files=2, now=0.0)
    assert p.fetched == 0 and p.fraction == pytest.approx(0.2) and math.isinf(p.eta_s)
    p = advance(p, 300 << 20, 1.0)  # 100 MiB in 1 s
    assert p.speed == pytest.approx(100 << 20) and p.eta_s == pytest.approx(7.0)
    for t in range(2, 40):  # the link slows to 10 MiB/s: the average follows within seconds
        p = advance(p, p.done + (10 << 20), float(t))
    assert p.speed == pytest.approx(10 << 20, rel=0.01) and p.fetched == (100 << 20) + 38 * (10 << 20)
    assert format_eta(3725) == "1:02:05" and format_eta(65) == "1:05" and format_eta(math.inf) == "--:--"
    line = describe(p.__class__(**{**p.__dict__, "phase": "downloading", "file_index": 1}))
    assert "68%" in line and "MiB/s" in line and "ETA 0:32" in line and "resumed at 200.0 MiB" in line
    assert text_bar(p, 10).startswith("[#######...]")
