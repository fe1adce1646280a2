"""services/hub.py against a local Hub that speaks huggingface_hub's protocol (tests/fake_hub.py):
search, listings with digests, header-only reads (the bytes are counted on both ends), the
transformers checks, gated repos and the token, offline mode."""
from __future__ import annotations

import pytest

from core.hub_files import group_gguf
from services.hub import FIRST_READ_BYTES, HubClient, HubError
from tests.fake_hub import TOKEN
from tests.hub_repos import (EVIL, EVIL_NAMES, GATED, LLAMA8B, PICKLE, REMOTE_CODE, SAFETENSORS, SPLIT, TINY)

MIB = 1 << 20


@pytest.fixture
def hub(fake_hub):
    fake_hub.reset_counters()
    return fake_hub


def test_search_sorts_by_downloads_and_filters_format_and_text(hub):
    client = HubClient(endpoint=hub.url, token=False)
    gguf = client.search("", "gguf")
    assert [r.repo for r in gguf][:2] == [LLAMA8B, TINY]
    assert [r.downloads for r in gguf] == sorted((r.downloads for r in gguf), reverse=True)
    assert {r.repo for r in client.search("", "safetensors")} == {SAFETENSORS, REMOTE_CODE}
    assert [r.repo for r in client.search("tiny", "gguf")] == [TINY]
    assert next(r for r in gguf if r.repo == GATED).gated
    query = next(entry for entry in hub.log if entry[2] == "/api/models")
    assert query[1] == "GET"


def test_listing_has_digests_and_refuses_hostile_names(hub):
    client = HubClient(endpoint=hub.url, token=False)
    listing = client.listing(TINY)
    assert listing.revision == hub.repos[TINY].sha and listing.kind == "gguf"
    q4 = next(f for f in listing.files if f.path == "tiny-Q4_0.gguf")
    assert q4.sha256 == hub.file(TINY, "tiny-Q4_0.gguf").sha256 and q4.size == hub.file(TINY, "tiny-Q4_0.gguf").size
    readme = next(f for f in listing.files if f.path == "README.md")
    assert readme.git_oid == hub.file(TINY, "README.md").git_oid and not readme.sha256
    evil = client.listing(EVIL)
    assert [f.path for f in evil.files] == ["ok-F32.gguf"]
    assert len(evil.refused) == len(EVIL_NAMES)
    for bad in ("bad id", "../etc", "a/b/c"):
        with pytest.raises(ValueError):
            client.listing(bad)
    with pytest.raises(HubError, match="not found on the Hub"):
        client.listing("test-org/Nope")


def test_only_the_header_of_a_gguf_is_read(hub):
    client = HubClient(endpoint=hub.url, token=False)
    listing = client.listing(LLAMA8B)
    models, notes = group_gguf(listing.files)
    q4 = next(m for m in models if m.quant == "Q4_K_M")
    hub.reset_counters()
    shape, read = client.gguf_shape(LLAMA8B, listing.revision, q4)
    served = hub.served_bytes(LLAMA8B, q4.first.path)
    assert shape.n_layer == 32 and shape.quantization == "Q4_K_M" and shape.n_vocab == 128256
    assert read == served == client.bytes_fetched
    assert served <= 5 * MIB and q4.size > 4500 * MIB  # a few MB of a 4.6 GiB file
    ranges = [entry[3] for entry in hub.log if entry[2].startswith("/cdn/")]
    assert ranges and all(r and r.startswith("bytes=") for r in ranges)
    assert notes and "mmproj" in notes[0]


def test_the_header_read_is_capped(hub):
    client = HubClient(endpoint=hub.url, token=False, header_cap=1 * MIB)
    listing = client.listing(LLAMA8B)
    model = group_gguf(listing.files)[0][0]
    hub.reset_counters()
    with pytest.raises(HubError, match="header is larger than 1048576 bytes"):
        client.gguf_shape(LLAMA8B, listing.revision, model)
    assert hub.served_bytes(LLAMA8B, model.first.path) <= 1 * MIB


def test_a_split_model_is_planned_from_all_its_shards(hub):
    client = HubClient(endpoint=hub.url, token=False)
    listing = client.listing(SPLIT)
    models, _ = group_gguf(listing.files)
    assert len(models) == 1 and len(models[0].files) == 3
    shape, read = client.gguf_shape(SPLIT, listing.revision, models[0])
    assert shape.n_layer == 2 and shape.file_bytes == models[0].size
    assert read == sum(f.size for f in models[0].files)  # tiny shards: read whole, and no more


def test_transformers_repo_is_checked_from_config_and_headers(hub):
    client = HubClient(endpoint=hub.url, token=False)
    listing = client.listing(SAFETENSORS)
    hub.reset_counters()
    repo, selection, read = client.transformers_repo(listing)
    assert read == sum(r.sent for r in hub.log)  # config, tokenizer config and the safetensors header
    assert repo.dims.n_layer == 2 and repo.dims.hidden_size == 64 and repo.quant_method == ""
    assert len(repo.tensors) == 2 * 9 + 3
    assert sorted(f.path for f in selection.files) == ["config.json", "model.safetensors", "tokenizer.json",
                                                       "tokenizer_config.json"]
    weights = hub.file(SAFETENSORS, "model.safetensors")
    assert hub.served_bytes(SAFETENSORS, "model.safetensors") <= FIRST_READ_BYTES < weights.size  # the header only
    with pytest.raises(HubError, match="only pickle weights.*pytorch_model.bin"):
        client.transformers_repo(client.listing(PICKLE))
    with pytest.raises(HubError, match="own Python code.*auto_map"):
        client.transformers_repo(client.listing(REMOTE_CODE))


def test_gated_repos_need_the_token_which_never_leaves_the_hub(hub):
    listing = HubClient(endpoint=hub.url, token=False).listing(GATED)
    model = group_gguf(listing.files)[0][0]
    with pytest.raises(HubError, match="gated.*HF_TOKEN") as refused:
        HubClient(endpoint=hub.url, token=False).gguf_shape(GATED, listing.revision, model)
    assert TOKEN not in str(refused.value)
    hub.reset_counters()
    shape, _ = HubClient(endpoint=hub.url, token=TOKEN).gguf_shape(GATED, listing.revision, model)
    assert shape.n_layer == 2
    hub_port = int(hub.url.rsplit(":", 1)[1])
    assert any(port == hub_port and auth for port, *_, auth in hub.log)
    assert not any(port != hub_port and auth for port, *_, auth in hub.log)  # the CDN never sees it


def test_offline_mode_fails_at_once_with_a_plain_message(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE=1.*local library works"):
        HubClient(endpoint=hub.url, token=False).search("tiny", "gguf")
    assert hub.log == []
