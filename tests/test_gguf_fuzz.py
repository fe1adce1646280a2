"""GGUF header fuzzing (issue 13).

1. 1000 seeded mutations through ``core/gguf_header.py``: each is parsed or refused with one line
   (a GGUFError), never another exception, never a hang. They mutate a *reduced* copy of the embedded
   model's header (tests/gguf_fields.py: the three 49k-entry tokenizer arrays cut to 64 entries,
   ``general.alignment`` written out). Every kind of field is still there and each mutation picks a kind
   first, then a field of it, then a hostile value: counts (tensors, entries, array items), string
   lengths, value/array/tensor types, dimension counts and sizes, tensor offsets, the alignment, the
   version, plus random bytes, cuts and shifted bytes. A parse then costs ~2 ms instead of 0.17 s, and
   the mutations land on structure rather than on vocabulary strings. (Before, the parse test mutated
   the first 1 MiB of a 1.78 MB header, so every mutant ended inside the header and was refused as cut.)
2. 50 mutants of the *full* header (the file as a user would have it) through the running app's own
   Load (the `/load_model` endpoint the Model panel's button calls), each placed in its models folder:
   each failure is one line, and after each the app's status is the embedded model, ready (a /v1 chat
   with it every 5th mutant and after every reload). A mutant that passes the header check costs two
   worker starts (its load, and loading the embedded model again); with these seeded structural
   mutations 48 of 50 are refused before any worker starts, so the test stays near a minute."""
from __future__ import annotations

import random
import time

import httpx
import pytest

from core.gguf_header import GGUFError, parse_header
from tests.conftest import start_app
from tests.gguf_fields import mutate, read_header, reduced_header

N_MUTATIONS = 1000
N_APP_MUTANTS, MAX_PASSING = 50, 3
EMBEDDED = "SmolLM2-135M-Instruct Q4_1 (embedded)"
LOAD = [512, None, "f16", True, None, 512]  # n_ctx, layers, kv type, flash attention, threads, batch


def _parse(data: bytes, size: int):
    pos = [0]

    def read(n: int) -> bytes:
        chunk = data[pos[0]: pos[0] + n]
        pos[0] += len(chunk)
        return chunk

    return parse_header(read, file_size=size)


def test_1000_header_mutations_are_parsed_or_refused_in_one_line(embedded_model, tmp_path):
    path = reduced_header(embedded_model, tmp_path / "reduced.gguf")
    head = read_header(path)
    data, size = head.buf[: head.end + 64], path.stat().st_size
    assert len(_parse(data, size).tensors) == 272  # the reduced copy is a valid header
    rng = random.Random(13)
    outcomes: dict[str, list[int]] = {}
    started = time.monotonic()
    for i in range(N_MUTATIONS):
        kind, mutated = mutate(data, head, rng)
        one = time.monotonic()
        try:
            _parse(bytes(mutated), len(mutated) if kind == "cut" else size - len(data) + len(mutated))
            outcomes.setdefault(kind, [0, 0])[0] += 1
        except GGUFError as exc:
            outcomes.setdefault(kind, [0, 0])[1] += 1
            assert str(exc).strip() and "\n" not in str(exc), (i, kind, str(exc))
        assert time.monotonic() - one < 2.0, f"mutation {i} ({kind}) took too long"
    print(f"{N_MUTATIONS} mutations in {time.monotonic() - started:.1f} s, kind: [parsed, refused] {outcomes}")
    # Every kind was tried, and the checks were reached by each kind that can break a header.
    assert set(outcomes) == {"version", "count", "length", "type", "dims", "offset", "alignment",
                             "bytes", "cut", "shift"}
    assert all(refused > 0 for _, refused in outcomes.values())
    assert sum(r for _, r in outcomes.values()) > N_MUTATIONS // 2


def _app_mutants(embedded_model, whole: bytes):
    """(name, kind, mutated header, file size): 50 seeded full-header mutants. The file is the mutated
    header and a sparse rest of the original's length (a cut file ends where it was cut): writing 98 MB
    fifty times would cost more than the loads. A mutant that passes the header check then loads zero
    weights in llama.cpp, which is still a real worker load of a mutated file."""
    head = read_header(embedded_model)
    end, size = head.end, len(whole)
    rng = random.Random(7)
    out = []
    for i in range(N_APP_MUTANTS):
        kind, header = mutate(whole[:end], head, rng)
        out.append((f"mutant-{i:02d}.gguf", kind, bytes(header), len(header) if kind == "cut" else size - end + len(header)))
    return out


def _v1_answers(app) -> str:
    r = httpx.post(app.url + "v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200, r.text[:300]
    return r.json()["model"]


def _status_is_embedded_ready(client) -> bool:
    status = client.predict(api_name="/model_status")
    return status["status"] == "ready" and status["model"] == EMBEDDED


@pytest.mark.real_model
def test_50_mutants_through_the_running_apps_load(embedded_model, tmp_path):
    mutants = _app_mutants(embedded_model, embedded_model.read_bytes())
    app = start_app(["--ctx", "512"], tmp_path / "data")
    models = app.data_dir / "models"
    results: dict[str, int] = {"refused by the header check": 0, "loaded": 0, "refused by llama.cpp": 0}
    try:
        client = app.client()
        app.wait_model_ready()
        serving = _v1_answers(app)
        started = time.monotonic()
        for i, (name, kind, header, file_size) in enumerate(mutants):
            path = models / name
            with open(path, "wb") as fh:
                fh.write(header)
                fh.truncate(file_size)
            status = client.predict(name, *LOAD, api_name="/load_model")
            first = status.split("\n\n")[0]
            assert "Traceback" not in status, (name, kind, status)
            if status.startswith("**Ready**"):
                results["loaded"] += 1
                _v1_answers(app)
            else:  # one line: "Load failed. Cannot load mutant-NN.gguf: <the reason>"
                assert first.startswith("**Load failed.**") and "\n" not in first and len(first) < 2000, \
                    (name, kind, status)
                assert ": " in first and first.split(": ", 1)[1].strip(), (name, kind, status)
            reloaded = not _status_is_embedded_ready(client)
            if not reloaded:  # refused before the serving model was touched
                results["refused by the header check"] += status.startswith("**Load failed.**")
            else:  # it reached a worker (and replaced the serving model): load the embedded one again
                results["refused by llama.cpp"] += status.startswith("**Load failed.**")
                assert client.predict(EMBEDDED, *LOAD, api_name="/load_model").startswith("**Ready**")
                assert _status_is_embedded_ready(client), name
            # The app serves on with the embedded model: its status after each, a real reply every 5th
            # and after each reload (a reply costs ~0.3-3 s on the shared machine).
            if i % 5 == 4 or reloaded:
                assert _v1_answers(app) == serving, name
            path.unlink()
        elapsed = time.monotonic() - started
        assert app.proc.poll() is None and "Traceback" not in app.output()
        # Structural mutants: the header check refuses nearly all (47 of these 50 at least) before any
        # worker starts, which also keeps this test's worker starts (two per mutant that passes) few.
        assert results["refused by the header check"] >= N_APP_MUTANTS - MAX_PASSING, results
        print(f"{N_APP_MUTANTS} mutants through the app's Load in {elapsed:.1f} s: {results}")
    finally:
        app.stop()
