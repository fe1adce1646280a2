import os

import pytest

from core.model_catalog import ModelCatalog, ModelEntry, UnknownModelError
from services.local_models import build_catalog, scan_models_dir
from services.paths import EMBEDDED_NAME


def test_names_are_an_allow_list():
    cat = ModelCatalog.build([ModelEntry("a.gguf", "/m/a.gguf", "library")])
    assert cat.get("a.gguf").path == "/m/a.gguf"
    for bad in ["../a.gguf", "/etc/passwd", "/m/a.gguf", "a.gguf\x00", "", None, 3, ["a.gguf"]]:
        with pytest.raises(UnknownModelError):
            cat.get(bad)


def test_duplicate_names_get_suffixes_and_duplicate_paths_are_dropped():
    cat = ModelCatalog.build([ModelEntry("m", "/a/m", "library"), ModelEntry("m", "/b/m", "library"),
                              ModelEntry("other", "/a/m", "library")])
    assert cat.names == ["m", "m (2)"]


def test_scan_skips_symlinks_and_escapes(tmp_path):
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "a.gguf").write_bytes(b"GGUF")
    (models / "sub" / "b.gguf").write_bytes(b"GGUF")
    (models / "notes.txt").write_text("x")
    outside = tmp_path / "secret.gguf"
    outside.write_bytes(b"GGUF")
    os.symlink(outside, models / "link.gguf")
    os.symlink(tmp_path, models / "escape")
    names = [e.name for e in scan_models_dir(models)]
    assert names == ["a.gguf", "sub/b.gguf"]
    assert scan_models_dir(tmp_path / "missing") == []


def test_catalog_lists_cli_model_first_then_embedded(tmp_path, embedded_model):
    cli = tmp_path / "mine.gguf"
    cli.write_bytes(b"GGUF")
    cat = build_catalog(cli, tmp_path / "nothing")
    assert cat.names == ["mine.gguf", EMBEDDED_NAME]
    assert cat.get(EMBEDDED_NAME).path == str(embedded_model.resolve())
