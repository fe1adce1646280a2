"""Badge = load: for every preset x every profile in profiles/, and for every library model, the plan
a screen shows is the plan the model manager then executes (same layers, KV type, context, expert
placement), through the one planning door and the one planning object the manager shares.

The GPUs of the profiles are not here, so the manager's backend only records what it was asked
to load; the planning under test is the real one, on real GGUF headers (sparse synthetic files)."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from backends.base import ChatStream, LoadSpec, ModelInfo, ModelLoadError
from backends.load_planning import LoadPlanner
from backends.manager import ModelManager
from core.load_plan import applied_options, same_placement
from core.preset_plans import plan_preset
from core.presets import EMBEDDED_KEY, repo_folder
from core.settings import AppSettings
from services.hardware import list_profiles
from services.library import library_items
from services.local_models import build_catalog
from services.planning import Planning
from services.presets_loader import load_presets
from tests.conftest import ROOT
from tools.synth_gguf import write
from ui import library_handlers, presets_handlers
from ui.context import AppContext

PROFILES = list_profiles(ROOT / "profiles")[0]
PRESETS = load_presets([ROOT / "presets"])[0]
LLAMA_PRESETS = {k: p for k, p in PRESETS.items() if p.backend == "llama_cpp"}


class RecordingBackend:
    """Stands in for a worker on a GPU that is not here: records the spec it is asked to load."""
    name = "llama_cpp"

    def __init__(self) -> None:
        self.loaded: list[LoadSpec] = []

    def load(self, spec: LoadSpec) -> ModelInfo:
        self.loaded.append(spec)
        o = spec.options
        return ModelInfo(spec.display_name, spec.model_path, spec.backend, o.n_ctx, o.n_ctx, 0, o.n_gpu_layers, True,
                         2, o.kv_type, o.flash_attn, "gguf", 0.0, 0)

    def unload(self) -> None:
        pass

    def stream_chat(self, messages, params, cancel: threading.Event) -> ChatStream:  # pragma: no cover
        raise NotImplementedError


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    """The llama.cpp presets' files under their own repository folders, plus decoys elsewhere."""
    root = tmp_path_factory.mktemp("data") / "models"
    root.mkdir()
    shapes = {"Meta-Llama-3.1-8B": "llama31-8b", "Meta-Llama-3.1-70B": "llama31-70b", "Qwen3-30B-A3B": "qwen3moe-30b-a3b"}
    for preset in LLAMA_PRESETS.values():
        if preset.model.repo:
            folder = root / repo_folder(preset.model.repo)
            folder.mkdir()
            shape = next(v for k, v in shapes.items() if k in preset.model.repo)
            write(folder / f"{preset.model.repo.split('/')[1].removesuffix('-GGUF')}-Q4_K_M.gguf", shape, sparse=True)
    # A file named like a preset's, in another repository's folder and at the top: never a preset's model.
    (root / "someone--Qwen2.5-0.5B-Instruct-GGUF").mkdir()
    write(root / "someone--Qwen2.5-0.5B-Instruct-GGUF" / "Meta-Llama-3.1-70B-Instruct-Q4_K_M.gguf", "smollm2-135m",
          layers=2, sparse=True)
    write(root / "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "smollm2-135m", layers=2, sparse=True)
    return root


def _library(models_dir: Path) -> list[tuple[str, str]]:
    return [(EMBEDDED_KEY if e.source == "embedded" else e.name, e.path) for e in build_catalog(None, models_dir).entries]


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("key", sorted(LLAMA_PRESETS))
def test_each_presets_plan_is_what_the_manager_executes(models_dir, tmp_path, profile, key):
    hw = PROFILES[profile]
    planning = Planning(tmp_path, lambda: hw, ttl_s=0)
    preset = LLAMA_PRESETS[key]
    entry = plan_preset(key, preset, hw, _library(models_dir), planning.facts, planning.calibration(hw))
    assert entry.local_path is not None and entry.exact_shape, entry.problem
    if preset.model.repo:  # never a similarly named file outside its repository folder
        assert f"/{repo_folder(preset.model.repo)}/" in entry.local_path and "someone--" not in entry.local_path
    if entry.plan.fit == "no_fit":  # shown as "Does not fit": the manager refuses it the same way
        with pytest.raises(ModelLoadError, match="will not fit"):
            LoadPlanner(planning).prepare(LoadSpec(entry.local_path, preset.load_options()))
        return
    spec, executed = LoadPlanner(planning).prepare(LoadSpec(entry.local_path, applied_options(entry.plan,
                                                                                              preset.load_options())))
    assert same_placement(entry.plan, executed), (entry.plan, executed)
    assert spec.options == applied_options(entry.plan, preset.load_options())
    assert executed.vram_bytes == entry.plan.vram_bytes and executed.tokens_per_s == entry.plan.tokens_per_s


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_library_badges_and_the_chat_panels_automatic_load_are_what_the_manager_executes(models_dir, tmp_path,
                                                                                          profile):
    hw = PROFILES[profile]
    planning = Planning(tmp_path, lambda: hw, ttl_s=0)
    catalog = build_catalog(None, models_dir)
    items = library_items(catalog, hw, {}, planning.calibration(hw), planning.facts)
    assert len(items) >= 4
    planner = LoadPlanner(planning)
    for item in items:
        if item.plan is None or item.plan.fit == "no_fit":
            continue
        # The Library's Load button: the badge's plan applied.
        _, executed = planner.prepare(LoadSpec(item.entry.path, applied_options(item.plan)))
        assert same_placement(item.plan, executed), item.entry.name
        # The chat's Model panel with every field automatic: the same plan as the badge.
        _, automatic = planner.prepare(LoadSpec(item.entry.path))
        assert same_placement(item.plan, automatic), item.entry.name


def test_the_load_buttons_apply_the_shown_plan_and_read_each_file_once(models_dir, tmp_path):
    hw = PROFILES["rtx3060-12g"]
    backend = RecordingBackend()
    settings = AppSettings(data_dir=models_dir.parent)
    planning = Planning(settings.data_dir, lambda: hw, ttl_s=0)
    manager = ModelManager(lambda name: backend, planner=LoadPlanner(planning))
    ctx = AppContext(settings, manager, lambda: build_catalog(None, models_dir), hardware=planning.machine,
                     planning=planning)
    shown = {e.key: e for e in presets_handlers.ranked(ctx, "What if: " + hw.label, "Longest context")[0]}
    key = "llama31-8b-instruct-q4_k_m"
    before = planning.inspections
    presets_handlers.load_preset(ctx, key, "Longest context")
    assert planning.inspections == before  # the ranking read the header; the load reused it
    assert same_placement(manager.state().plan, shown[key].plan)
    assert backend.loaded[-1].options == applied_options(shown[key].plan, PRESETS[key].load_options())

    name = next(n for n in ctx.catalog().names if "8B" in n)
    library_handlers.refresh(ctx)
    badge = next(i for i in library_items(ctx.catalog(), hw, {}, planning.calibration(hw), planning.facts)
                 if i.entry.name == name)
    before = planning.inspections
    library_handlers.load(ctx, name)
    assert planning.inspections == before
    assert same_placement(manager.state().plan, badge.plan)


def test_the_app_shares_one_planning_object_with_the_manager(tmp_path):
    from cli.launch import make_context

    ctx = make_context(AppSettings(data_dir=tmp_path))
    try:
        assert ctx.manager._planner.planning is ctx.planning
        assert ctx.hardware == ctx.planning.machine
    finally:
        ctx.manager.close()
