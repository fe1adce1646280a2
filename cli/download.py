"""``python app.py download REPO [--file GLOB]``: download a model from the Hub into the models
folder, with a progress bar, resume and verification (the Models tab's downloader).

    python app.py download bartowski/Llama-3.2-1B-Instruct-GGUF              # the quant that fits best
    python app.py download bartowski/Llama-3.2-1B-Instruct-GGUF --file '*Q4_K_M*'
    python app.py download HuggingFaceTB/SmolLM2-135M-Instruct                # safetensors + config

Without --file, a GGUF repo with several files gets the one that fits this machine best (planned
from the headers). Exits 0 when installed, 1 when the download failed, 2 on bad input, 130 on
Ctrl+C (run it again to resume).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from cli.args import OneLineParser, UsageError, fail
from core.hub_files import HubNameError, check_glob, check_repo_id, format_bytes, group_gguf
from core.hub_fit import best_row
from core.settings import AppSettings
from core.transfer import TransferProgress, text_bar


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="app.py download", description="Download a model from the Hugging Face Hub.")
    p.add_argument("repo", help="owner/name on the Hub")
    p.add_argument("--file", help="GGUF file name or glob (e.g. '*Q4_K_M*'); default: what fits best")
    p.add_argument("--data-dir", type=Path, help="the app's data folder (default ~/.local/share/fitchat)")
    return p


class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, p: TransferProgress) -> None:
        now = time.monotonic()
        if p.phase != "done" and now - self.last < (0.2 if self.tty else 2.0):
            return
        self.last = now
        line = text_bar(p)
        self.stream.write(f"\r{line:<110}" if self.tty else line + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _choose(hub, listing, pattern, data_dir: Path):
    """The files to fetch and their kind; UsageError or HubError when there are none."""
    from services.hub import HubError
    from services.remote_fit import gguf_rows

    if listing.kind == "transformers":
        if pattern:
            raise UsageError("--file applies to GGUF repos; a transformers repo is fetched whole (safetensors only)")
        return hub.transformers_repo(listing)[1].files, "transformers"
    if listing.kind != "gguf":
        raise HubError(f"{listing.repo} has no GGUF or safetensors model files.")
    models, _ = group_gguf(listing.files)
    if pattern:
        import fnmatch

        models = [m for m in models if any(fnmatch.fnmatch(f.name, pattern) for f in m.files)]
        if not models:
            names = ", ".join(f.name for f in listing.files if f.name.endswith(".gguf"))[:300]
            raise UsageError(f"--file {pattern!r} matches no GGUF file of {listing.repo} (it has: {names})")
        return tuple(f for m in models for f in m.files), "gguf"
    if len(models) == 1:
        return models[0].files, "gguf"
    from services.calibration import load_calibration
    from services.hardware import probe

    hw = probe(data_dir / "models", measure_ram_bandwidth=False)
    rows = list(gguf_rows(hub, listing, models, hw, load_calibration(data_dir, hw.gpus[0].name if hw.gpus else None)))
    best = best_row(rows)
    if best is None:
        problems = [r.problem for r in rows if r.plan is None]
        why = f"none could be planned ({problems[0]})" if len(problems) == len(rows) else "none fits this machine"
        raise HubError(f"No GGUF file of {listing.repo} was chosen: {why}. Pick one with --file.")
    row = next(r for r in rows if r.key == best)
    print(f"Chose {row.label} ({format_bytes(row.size)}): {row.plan.fit_label}, ~{row.plan.tokens_per_s:.1f} "
          f"tokens/s on this machine (planned from the headers; --file picks another)", flush=True)
    return next(m for m in models if m.key == best).files, "gguf"


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        repo = check_repo_id(args.repo)
        pattern = check_glob(args.file) if args.file is not None else None
    except HubNameError as exc:
        raise UsageError(str(exc)) from None
    from services.downloads import DownloadError, Downloader, DownloadRequest
    from services.hub import HubClient, HubError
    from services.paths import default_data_dir

    settings = AppSettings(data_dir=(args.data_dir or default_data_dir()).expanduser())
    hub = HubClient()
    try:
        listing = hub.listing(repo)
        files, kind = _choose(hub, listing, pattern, settings.data_dir)
    except HubError as exc:
        return fail(str(exc), 1)
    print(f"Downloading {len(files)} file(s), {format_bytes(sum(f.size for f in files))}, into "
          f"{settings.models_dir}", flush=True)
    bar, cancel = Bar(), threading.Event()
    try:
        done = Downloader(settings.models_dir, hub).run(DownloadRequest(repo, listing.revision, files, kind), bar,
                                                        cancel)
    except DownloadError as exc:
        bar.end()
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        bar.end()
        print("Interrupted: what was downloaded is kept; run the same command again to resume.", file=sys.stderr)
        return 130
    bar.end()
    resumed = f", {format_bytes(done.resumed)} resumed from an earlier attempt" if done.resumed else ""
    print(f"Installed {done.path} (verified; fetched {format_bytes(done.fetched)} in {done.seconds:.1f} s{resumed})")
    return 0
