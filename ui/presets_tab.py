"""Presets tab: this machine at a glance, every preset ranked for it (or for a described machine)
with a fit badge, predicted VRAM, RAM and tokens/s and the reasons; load one. Wiring only."""
from __future__ import annotations

import gradio as gr

from ui import presets_handlers as h
from ui.access import require_admin
from ui.context import AppContext
from ui.load_feedback import wire_load
from ui.quiet_dropdown import Dropdown


def build(ctx: AppContext) -> None:
    gr.Markdown("### Presets ranked for your hardware\nPredictions come from the model files' own headers when "
                "they are on disk, else from the preset's description. Pick another machine to ask *what if*.")
    machine_labels = h.machine_labels(ctx)
    with gr.Row():
        machine = Dropdown(machine_labels, value=machine_labels[0] if machine_labels else None,
                              label="Machine", elem_id="presets-machine", scale=3)
        goal = gr.Radio(list(h.GOALS), value="Fastest", label="Goal", elem_id="presets-goal", scale=2)
        refresh_btn = gr.Button("Refresh", elem_id="presets-refresh", size="sm", scale=1)
    hardware = gr.Markdown(elem_id="presets-hardware")
    # Load above the table: its result shows by the button, not below a long table.
    with gr.Row():
        choice = Dropdown(label="Preset to load (on this machine)", elem_id="presets-choice", scale=4)
        load_btn = gr.Button("Load", variant="primary", elem_id="presets-load", scale=1)
    load_line = gr.Markdown(elem_id="presets-load-feedback")
    status = gr.Markdown(elem_id="presets-status")
    table = gr.HTML(elem_id="presets-table")
    problems = gr.Markdown(elem_id="presets-problems")

    def on_refresh(machine_label, goal_label):
        return h.refresh(ctx, machine_label, goal_label)

    def on_load(request: gr.Request, key, goal_label):
        require_admin(ctx, request, "load a model")
        return h.load_preset(ctx, key, goal_label)  # the plan the table shows for this goal

    outputs = [hardware, table, problems, choice]
    inputs = [machine, goal]
    gr.on([machine.change, goal.change, refresh_btn.click], on_refresh, inputs, outputs, api_name="rank_presets",
          concurrency_limit=2)
    def wire(app, tabs):
        # The preset's sampling values go to the chat's Sampling widgets (found by their elem ids:
        # the Chat tab owns them).
        by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
        sampling = [by_id[f"sampling-{name}"] for name in h.SAMPLING_FIELDS]
        wire_load(ctx, load_btn, choice, lambda key: h.preset_name(ctx, key), on_load, [choice, goal],
                  [status, *sampling], load_line, api_name="load_preset", concurrency_limit=1,
                  concurrency_id="model-admin")
        tabs["presets"].select(on_refresh, inputs, outputs, api_visibility="private")
    return wire
