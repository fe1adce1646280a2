"""llama.cpp keeps the raw pointer of one log callback for the whole process. An engine that was
dropped after its unload once left that pointer on its freed closure, and the next llama.cpp log line
in the process (another engine, or llama-cpp-python's ``Llama``) was a segmentation fault (stop 20's
CI, in ``test_openai_logprobs``)."""
from __future__ import annotations

import ctypes
import gc
import subprocess
import sys
import textwrap
from pathlib import Path

from backends.base import LoadSpec
from backends.llama_cpp_engine import LlamaCppEngine
from core.options import LoadOptions

ROOT = Path(__file__).resolve().parents[1]

AFTER_A_DROPPED_ENGINE = textwrap.dedent("""
    import gc, sys
    from backends.base import LoadSpec
    from backends.llama_cpp_engine import LlamaCppEngine
    from core.options import LoadOptions
    from llama_cpp import Llama
    model = sys.argv[1]
    for _ in range(2):
        engine = LlamaCppEngine()
        engine._log._echo = None
        engine.load(LoadSpec(model, LoadOptions(n_ctx=256, n_threads=2)))
        engine.unload()
        del engine
        gc.collect()
        junk = [bytearray(64) for _ in range(200_000)]  # reuse the freed memory
        Llama(model, n_ctx=256, verbose=False, n_threads=2).close()  # llama.cpp logs while loading
        del junk
    print("survived")
""")


def test_llama_cpp_logs_after_a_dropped_engine(embedded_model):
    done = subprocess.run([sys.executable, "-c", AFTER_A_DROPPED_ENGINE, str(embedded_model)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "survived" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_the_logged_pointer_is_the_live_route_and_each_load_gets_its_own_lines(embedded_model):
    import llama_cpp as lc
    from backends import llama_cpp_engine

    first = LlamaCppEngine()
    first._log._echo = None
    first.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=256, n_threads=2)))
    assert first._log.buffers  # llama.cpp's buffer lines reached the loaded engine's capture
    first.unload()
    del first
    gc.collect()

    held, user_data = lc.llama_log_callback(), ctypes.c_void_p()
    lc.llama_log_get(ctypes.byref(held), ctypes.byref(user_data))
    live = llama_cpp_engine._log_callback
    assert ctypes.cast(held, ctypes.c_void_p).value == ctypes.cast(live, ctypes.c_void_p).value

    second = LlamaCppEngine()
    second._log._echo = None
    try:
        second.load(LoadSpec(str(embedded_model), LoadOptions(n_ctx=256, n_threads=2)))
        assert second._log.buffers
    finally:
        second.unload()
    seen = list(second._log.buffers)
    # another load after the unload logs its model buffers; they no longer reach this capture
    model = lc.llama_model_load_from_file(str(embedded_model).encode(), lc.llama_model_default_params())
    assert model
    lc.llama_model_free(model)
    assert second._log.buffers == seen
