"""services/downloads.py against the local Hub: verified installs, a connection cut at 50 %, a cancel
and a resume with nothing fetched twice, a flipped byte, hostile names, too little disk space,
transformers repos (safetensors only) and split GGUFs."""
from __future__ import annotations

import threading

import pytest

from core.hub_files import HubFile, group_gguf
from services.downloads import PARTIAL_DIR, DownloadCancelled, DownloadError, Downloader, DownloadRequest
from services.hf_repo import inspect_repo
from services.hub import HubClient
from services.local_models import scan_models_dir
from tests.hub_repos import SAFETENSORS, SPLIT, TINY

MIB = 1 << 20


@pytest.fixture
def hub(fake_hub):
    fake_hub.reset_counters()
    yield fake_hub
    fake_hub.cut_once.clear()
    fake_hub.corrupt.clear()
    fake_hub.down = False
    fake_hub.rate_mib_s = 0.0


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


def request_for(client: HubClient, repo: str, quant: str = "Q4_0") -> DownloadRequest:
    listing = client.listing(repo)
    model = next(m for m in group_gguf(listing.files)[0] if m.quant == quant)
    return DownloadRequest(repo, listing.revision, model.files)


def library(models) -> list[str]:
    return [e.name for e in scan_models_dir(models)]


def partial_files(models) -> list[str]:
    return sorted(p.name for p in (models / PARTIAL_DIR).rglob("*.part"))


def test_a_download_is_verified_then_installed_where_presets_look(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    seen = []
    done = Downloader(models, client).run(request_for(client, TINY), seen.append)
    size = hub.file(TINY, "tiny-Q4_0.gguf").size
    assert done.path == models / "test-org--Tiny-GGUF" / "tiny-Q4_0.gguf" and done.path.stat().st_size == size
    assert library(models) == ["test-org--Tiny-GGUF/tiny-Q4_0.gguf"]
    assert [p.phase for p in seen][-3:] == ["verifying", "installing", "done"] and seen[-1].done == size
    assert partial_files(models) == [] and hub.served_bytes(TINY, "tiny-Q4_0.gguf") == size
    again = Downloader(models, client).run(request_for(client, TINY))
    assert again.fetched == 0 and hub.served_bytes(TINY, "tiny-Q4_0.gguf") == size  # already there


def test_a_connection_cut_at_half_resumes_without_fetching_anything_twice(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    request = request_for(client, TINY)
    f = hub.file(TINY, "tiny-Q4_0.gguf")
    hub.cut_once[f.sha256] = f.size // 2
    done = Downloader(models, client).run(request)
    assert hub.cut_once == {}  # the cut happened
    assert hub.served_bytes(TINY, "tiny-Q4_0.gguf") == f.size == done.fetched
    ranges = [e[3] for e in hub.log if e[2] == f"/cdn/{f.sha256}"]
    assert ranges == [None, f"bytes={f.size // 2}-"]


def cancel_at(hub, client, models, request, share: float) -> int:
    """Download on a 100 MiB/s link and cancel once ``share`` of it is on disk; the bytes kept."""
    cancel = threading.Event()
    hub.rate_mib_s = 100
    try:
        with pytest.raises(DownloadCancelled, match="bytes kept; Download again resumes"):
            Downloader(models, client).run(request, lambda p: p.done >= share * p.total and cancel.set(), cancel)
    finally:
        hub.rate_mib_s = 0.0
    return sum(p.stat().st_size for p in (models / PARTIAL_DIR).rglob("*.part"))


def test_cancel_keeps_the_part_and_the_next_attempt_resumes_it(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    request = request_for(client, TINY)
    f = hub.file(TINY, "tiny-Q4_0.gguf")
    kept = cancel_at(hub, client, models, request, 0.5)
    assert f.size // 2 <= kept < f.size and library(models) == []
    hub.reset_counters()  # (bytes the server sent after the first attempt hung up were never received)
    done = Downloader(models, client).run(request)
    assert done.resumed == kept and done.fetched == f.size - kept
    assert hub.served_bytes(TINY, "tiny-Q4_0.gguf") == f.size - kept  # 0 bytes re-fetched
    assert [e[3] for e in hub.log if e[2] == f"/cdn/{f.sha256}"] == [f"bytes={kept}-"]
    assert library(models) == ["test-org--Tiny-GGUF/tiny-Q4_0.gguf"]


def test_a_hub_outage_mid_download_keeps_the_part_for_later(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    request = request_for(client, TINY)
    f = hub.file(TINY, "tiny-Q4_0.gguf")
    hub.cut_once[f.sha256] = f.size // 2
    hub.down = True  # the retry after the cut finds the CDN down
    with pytest.raises(DownloadError, match="HTTP 503.*partial file is kept"):
        Downloader(models, client).run(request)
    assert library(models) == [] and len(partial_files(models)) == 1
    hub.down = False
    Downloader(models, client).run(request)
    assert library(models) == ["test-org--Tiny-GGUF/tiny-Q4_0.gguf"]


def test_a_flipped_byte_fails_verification_and_nothing_is_listed(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    f = hub.file(TINY, "tiny-Q4_0.gguf")
    hub.corrupt[f.sha256] = f.size // 3
    with pytest.raises(DownloadError, match="tiny-Q4_0.gguf failed verification: its sha256.*bad file was deleted"):
        Downloader(models, client).run(request_for(client, TINY))
    assert library(models) == [] and partial_files(models) == []
    assert not (models / "test-org--Tiny-GGUF" / "tiny-Q4_0.gguf").exists()


@pytest.mark.parametrize("name", ["../../evil.gguf", "/tmp/evil.gguf", "a/../../../evil.gguf", ".hidden.gguf"])
def test_hostile_names_are_refused_before_anything_is_written(hub, models, tmp_path, name):
    client = HubClient(endpoint=hub.url, token=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    request = DownloadRequest(TINY, client.listing(TINY).revision, (HubFile(name, 10, "c" * 64),))
    with pytest.raises(DownloadError, match="Refused.*Nothing was downloaded"):
        Downloader(models, client).run(request)
    assert sorted(p.name for p in tmp_path.iterdir()) == before + (["models"] if "models" not in before else [])
    assert not any(e[2].startswith("/cdn/") or "/resolve/" in e[2] for e in hub.log)
    assert not list(models.rglob("*evil*"))


def test_too_little_disk_space_is_a_clear_error_and_nothing_is_fetched(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    request = request_for(client, TINY)
    size = request.files[0].size
    tight = Downloader(models, client, free_space=lambda path: size + 10 * MIB, margin_bytes=64 * MIB)
    hub.log.clear()
    with pytest.raises(DownloadError, match=r"Not enough disk space in .*models.*64\.0 MiB margin.*is free"):
        tight.run(request)
    assert library(models) == [] and partial_files(models) == []
    assert not any(e[2].startswith("/cdn/") for e in hub.log)
    roomy = Downloader(models, client, free_space=lambda path: size + 65 * MIB, margin_bytes=64 * MIB)
    assert roomy.run(request).path.is_file()


def test_a_transformers_repo_fetches_only_safetensors_config_and_tokenizer(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    listing = client.listing(SAFETENSORS)
    _, selection, _ = client.transformers_repo(listing)
    hub.log.clear()
    done = Downloader(models, client).run(DownloadRequest(SAFETENSORS, listing.revision, selection.files,
                                                          "transformers"))
    assert done.path == models / "test-org--Tiny-Safetensors"
    assert sorted(p.name for p in done.path.iterdir() if not p.name.startswith(".")) == [
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    fetched = " ".join(e[2] for e in hub.log)
    assert "pytorch_model.bin" not in fetched and "original/" not in fetched and "README" not in fetched
    entry = next(e for e in scan_models_dir(models))
    assert entry.backend == "transformers" and entry.name == "test-org--Tiny-Safetensors"
    assert inspect_repo(done.path).dims.n_layer == 2


def test_a_split_gguf_is_installed_as_one_model(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    done = Downloader(models, client).run(request_for(client, SPLIT, "F32"))
    assert done.path.name == "tiny-F32-00001-of-00003.gguf"
    entries = scan_models_dir(models)
    assert [e.name for e in entries] == ["test-org--Split-GGUF/tiny-F32-00001-of-00003.gguf"]
    assert entries[0].size_bytes == sum(f.size for f in hub.repos[SPLIT].files.values())


def test_one_download_per_repo_at_a_time_and_no_overwrite(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    request = request_for(client, TINY)
    hub.rate_mib_s = 100
    first_started = threading.Event()
    cancel = threading.Event()
    errors = []

    def first():
        try:
            Downloader(models, client).run(request, lambda p: first_started.set(), cancel)
        except DownloadError as exc:
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert first_started.wait(10)
    with pytest.raises(DownloadError, match="already being downloaded"):
        Downloader(models, client).run(request)
    cancel.set()
    thread.join(10)
    assert errors and isinstance(errors[0], DownloadCancelled)
    hub.rate_mib_s = 0.0
    target = models / "test-org--Tiny-GGUF" / "tiny-Q4_0.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"my own file")
    with pytest.raises(DownloadError, match="already in the models folder but differs"):
        Downloader(models, client).run(request)
    assert target.read_bytes() == b"my own file"


def test_a_symlinked_repo_folder_cannot_send_files_outside_the_models_folder(hub, models, tmp_path):
    client = HubClient(endpoint=hub.url, token=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    models.mkdir()
    (models / "test-org--Tiny-GGUF").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DownloadError, match="Refused.*outside the models folder"):
        Downloader(models, client).run(request_for(client, TINY))
    assert list(outside.iterdir()) == []


def test_a_part_damaged_on_disk_between_attempts_fails_verification(hub, models):
    client = HubClient(endpoint=hub.url, token=False)
    request = request_for(client, TINY)
    assert cancel_at(hub, client, models, request, 0.3) > 1000
    part = next((models / PARTIAL_DIR).rglob("*.part"))
    with part.open("r+b") as fh:  # the resumed prefix is hashed again from disk, not trusted
        fh.seek(1000)
        fh.write(b"\xff")
    with pytest.raises(DownloadError, match="failed verification"):
        Downloader(models, client).run(request)
    assert library(models) == [] and partial_files(models) == []
