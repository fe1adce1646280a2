"""core.resources: the bounded history, its CSV and the plotted series, from plain data."""
from __future__ import annotations

import csv
import io

import pytest

from core.resources import (GIB, MIB, GenerationSample, GpuSample, ResourceSample, SampleHistory, SystemSample,
                            VramProcess, format_bytes, generation_sample, history_csv, plot_points)
from core.generation import GenerationProgress, GenerationStats
from ui.resources_view import generation_card

T0 = 1_795_000_000.0


def system(used_gib=4.0, cores=(10.0, 30.0), worker=None) -> SystemSample:
    return SystemSample(16 * GIB, int(used_gib * GIB), int((16 - used_gib) * GIB), 2 * GIB, 0, cores,
                        app_rss_bytes=200 * MIB, worker_rss_bytes=worker)


def h100(used_gib=10.0, worker_gib=8.0, util=50.0, **changes) -> GpuSample:
    procs = (VramProcess(7, "python", int(worker_gib * GIB), "worker"), VramProcess(9, "blender", GIB))
    return GpuSample(**{**dict(index=0, name="H100", memory_used_bytes=int(used_gib * GIB),
                               memory_total_bytes=80 * GIB, util_percent=util, processes=procs), **changes})


def sample(seq, gpus=(), **kw) -> ResourceSample:
    return ResourceSample(seq, T0 + seq, kw.pop("system", system()), tuple(gpus), **kw)


def test_history_is_a_bounded_ring_over_the_last_five_minutes():
    history = SampleHistory(seconds=300, interval_s=1)
    for i in range(1, 1001):
        history.append(sample(i))
    assert len(history) == 301
    recent = history.recent()
    assert recent[0].seq == 700 and recent[-1].seq == 1000  # 300 s before the newest, inclusive
    assert [s.seq for s in history.recent(now=T0 + 1000 + 290)] == list(range(990, 1001))
    assert SampleHistory().recent() == ()
    with pytest.raises(ValueError):
        SampleHistory(seconds=0)


def test_csv_has_a_column_group_per_gpu_and_core_and_blank_cells_for_unknowns():
    rows = [
        sample(1, [h100()], generation=GenerationSample(True, 31.5, 0.12, 300, 4096), worker_pid=7, cost_ms=0.4),
        sample(2, [h100(util=None), GpuSample(1, "RTX 3060", 3 * GIB, 12 * GIB, processes=None)],
               system=system(cores=(5.0, 6.0, 7.0)), errors=("GPU0 utilisation: Unknown Error",), gpu_note=""),
        sample(3, [], system=None, gpu_note="CPU only: no driver"),
    ]
    table = list(csv.DictReader(io.StringIO(history_csv(rows))))
    assert len(table) == 3
    first, second, third = table
    assert first["time_utc"] == "2026-11-18T11:06:41.000+00:00"
    assert first["gpu0_memory_used_bytes"] == str(10 * GIB) and first["gpu0_worker_vram_bytes"] == str(8 * GIB)
    assert first["gpu0_other_vram_bytes"] == str(GIB) and first["gpu0_util_percent"] == "50"
    assert first["gpu1_memory_total_bytes"] == "" and first["cpu2_percent"] == ""
    assert (first["generating"], first["tokens_per_s"], first["context_used"]) == ("1", "31.5", "300")
    assert first["cpu_mean_percent"] == "20" and first["sampler_cpu_ms"] == "0.4"
    assert second["gpu0_util_percent"] == "" and second["errors"] == "GPU0 utilisation: Unknown Error"
    assert second["gpu1_memory_used_bytes"] == str(3 * GIB) and second["gpu1_other_vram_bytes"] == ""
    assert second["cpu2_percent"] == "7"
    assert third["ram_used_bytes"] == "" and third["gpu_note"] == "CPU only: no driver"
    assert third["gpu0_memory_used_bytes"] == ""


def test_csv_of_nothing_is_refused():
    with pytest.raises(ValueError, match="no samples"):
        history_csv([])


def test_plot_series_leave_gaps_for_missing_figures():
    rows = [sample(1, [h100()]), sample(2, [h100(util=None, memory_used_bytes=None)])]
    vram = plot_points(rows, "vram")
    assert (T0 + 1, "GPU0 used", 10.0) in vram and (T0 + 1, "GPU0 FitChat worker", 8.0) in vram
    assert not any(t == T0 + 2 and name == "GPU0 used" for t, name, _ in vram)  # a gap, not a zero
    util = plot_points(rows, "gpu_util")
    assert [(t, v) for t, name, v in util if name == "GPU0"] == [(T0 + 1, 50.0)]
    ram = {name: v for t, name, v in plot_points(rows[:1], "ram")}
    assert ram == {"RAM used": 4.0, "swap used": 0.0, "FitChat app": pytest.approx(200 / 1024)}
    cpu = {name: v for t, name, v in plot_points(rows[:1], "cpu")}
    assert cpu == {"all cores": 20.0, "busiest core": 30.0}
    with pytest.raises(ValueError):
        plot_points(rows, "bogus")


def test_tokens_per_second_is_plotted_only_while_a_reply_streams():
    rows = [sample(1, generation=GenerationSample(True, 40.0)), sample(2, generation=GenerationSample(False, 40.0))]
    assert plot_points(rows, "tokens") == [(T0 + 1, "tokens/s", 40.0), (T0 + 2, "tokens/s", 0.0)]


def test_a_reply_of_one_token_has_no_decode_speed_yet_rather_than_zero():
    live = GenerationProgress(started=10.0, n_ctx=2048, prompt_tokens=500)
    waiting = generation_sample(live, None)
    assert waiting.active and waiting.tokens_per_s is None and waiting.ttft_s is None
    assert waiting.live_tokens_per_s == 0.0  # the plot still gets a number
    live.completion_tokens, live.first_token_at, live.last_token_at = 1, 10.4, 10.4
    one = generation_sample(live, None)
    assert one.tokens_per_s is None and one.ttft_s == pytest.approx(0.4)
    card = generation_card(one)
    assert "measuring…" in card and "0.0 tokens/s" not in card and "400 ms" in card
    live.completion_tokens, live.last_token_at = 11, 10.9
    assert generation_sample(live, None).tokens_per_s == pytest.approx(20.0)
    assert "20.0 tokens/s" in generation_card(generation_sample(live, None))
    one_token_reply = GenerationStats(500, 1, 0.4, 0.0, 0.4, 2048, "stop")
    assert "decode speed</span><span>n/a" in generation_card(generation_sample(None, one_token_reply))


def test_format_bytes():
    assert format_bytes(None) == "n/a"
    assert format_bytes(512 * MIB) == "512 MiB"
    assert format_bytes(int(17.5 * GIB)) == "17.50 GiB"
