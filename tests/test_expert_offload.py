"""Expert offload in the engine: ``n_cpu_moe`` through the options model, the CLI flag and the UI's
parsing, and a real load of a small synthetic MoE GGUF on this CPU in the worker: it loads, it
generates, and llama.cpp's load log says the expert tensors of exactly the first N blocks went to
host buffers (the engine reports that count as ``ModelInfo.n_cpu_moe``)."""
from __future__ import annotations

import re
import threading

import pytest
from pydantic import ValidationError

from backends.base import LoadSpec
from backends.expert_offload import expert_pattern
from cli.args import OneLineParser, add_option_flags, options_from_args
from core.llama_log import expert_layers_in_ram, parse_override_line
from core.options import LoadOptions, SamplingOptions
from core.presets import parse_preset
from tools.synth_gguf import write


def test_the_pattern_matches_the_experts_of_the_first_n_blocks_only():
    pattern = re.compile(expert_pattern(3))
    for name in ("blk.0.ffn_gate_exps.weight", "blk.2.ffn_down_exps.weight", "blk.1.ffn_up_exps.bias",
                 "blk.2.ffn_gate_up_exps.weight"):
        assert pattern.search(name), name
    for name in ("blk.3.ffn_up_exps.weight", "blk.10.ffn_up_exps.weight", "blk.21.ffn_down_exps.weight",
                 "blk.0.ffn_gate_inp.weight", "blk.0.ffn_up_shexp.weight", "blk.0.attn_q.weight"):
        assert not pattern.search(name), name


def test_the_option_in_the_model_the_cli_and_presets():
    assert LoadOptions().n_cpu_moe is None and LoadOptions(n_cpu_moe=12).n_cpu_moe == 12
    for bad in (-1, 5000, 1.5, "x"):
        with pytest.raises(ValidationError):
            LoadOptions(n_cpu_moe=bad)
    parser = OneLineParser(prog="x")
    names = add_option_flags(parser, LoadOptions)
    assert options_from_args(LoadOptions, parser.parse_args(["--n-cpu-moe", "20"]), names).n_cpu_moe == 20
    preset = parse_preset({"name": "p", "backend": "llama_cpp", "quantization": "Q4_K_M",
                           "model": {"repo": "a/b"}, "load": {"n_cpu_moe": "auto"}}, "p.yaml")
    assert preset.load_options().n_cpu_moe is None


def test_override_lines_are_read_from_the_load_log():
    line = "tensor blk.7.ffn_down_exps.weight (162 MiB q6_K) buffer type overridden to CPU"
    assert parse_override_line(line) == ("blk.7.ffn_down_exps.weight", "CPU")
    assert parse_override_line("load_tensors: CPU_Mapped model buffer size = 1.2 MiB") is None
    found = [("blk.0.ffn_up_exps.weight", "CPU"), ("blk.0.ffn_down_exps.weight", "CPU"),
             ("blk.1.ffn_up_exps.weight", "CPU"), ("blk.2.attn_q.weight", "CPU")]
    assert expert_layers_in_ram(found) == 2


@pytest.mark.real_model
def test_a_small_moe_loads_generates_and_keeps_the_asked_experts_in_host_memory(tmp_path):
    from backends.worker_client import WorkerBackend

    model = write(tmp_path / "tiny-moe.gguf", "tiny-moe", "Q8_0", varied_routing=True)
    backend = WorkerBackend()
    try:
        for n in (2, 0):
            info = backend.load(LoadSpec(str(model), LoadOptions(n_ctx=256, n_threads=2, n_cpu_moe=n)))
            assert info.n_cpu_moe == n and info.n_layer == 4
            stream = backend.stream_chat("The", SamplingOptions(max_tokens=8, seed=1, temperature=0.0),
                                         threading.Event())
            text = "".join(stream)
            assert stream.stats.completion_tokens >= 1 and isinstance(text, str)
    finally:
        backend.unload()
