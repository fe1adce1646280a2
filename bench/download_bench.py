"""Download throughput of FitChat's downloader versus curl on the same file from the same local Hub,
and the bytes fetched twice after an interrupted download.

    .venv/bin/python bench/download_bench.py --size-mib 1024 --runs 5 --out bench/results/download.json

The Hub is tests/fake_hub.py in its own process (HTTP/1.1 on 127.0.0.1, the file sent with
sendfile). Each run fetches the file through ``resolve`` (302 to the CDN port, as the Hub does):
``curl -L`` writes it to disk; FitChat's ``Downloader.run`` writes it, hashes it as it arrives,
checks the sha256 and installs it. Runs alternate between the two. More series repeat this on
paced links (the server sends on the schedule of a 1 or 4 Gbit/s link), closer to a download from
the real Hub. Throughput = bytes / time; FitChat's "transfer" time runs from the start of ``run``
(metadata request included) to the end of the transfer, its "total" to the installed model.
Resume: a connection cut at 50 % (retried at once) and a cancel at about 50 % followed by a second
run; bytes re-fetched = bytes the client received in total minus the file size.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.hub_files import group_gguf  # noqa: E402
from services.downloads import DownloadCancelled, Downloader, DownloadRequest  # noqa: E402
from services.hub import HubClient  # noqa: E402
from tests.fake_hub import FakeHub  # noqa: E402

REPO = "bench/Throughput-GGUF"
MIB = 1 << 20


def make_file(folder: Path, size_mib: int) -> Path:
    path = folder / "bench-Q8_0.gguf"
    block = os.urandom(MIB)
    with path.open("wb") as fh:
        for i in range(size_mib):
            fh.write(block[i % 7:] + block[: i % 7])  # not all one block: no accidental dedup anywhere
    return path


def curl_run(url: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sSfL", "-o", str(out), url], check=True)
    return time.perf_counter() - started


def fitchat_run(hub_url: str, models: Path) -> dict:
    client = HubClient(endpoint=hub_url, token=False)
    listing = client.listing(REPO)
    model = group_gguf(listing.files)[0][0]
    marks: dict[str, float] = {}

    def on_progress(p):
        if p.phase == "verifying" and "verify" not in marks:
            marks["verify"] = time.perf_counter()

    started = time.perf_counter()
    done = Downloader(models, client).run(DownloadRequest(REPO, listing.revision, model.files), on_progress)
    ended = time.perf_counter()
    return {"transfer_s": marks["verify"] - started, "total_s": ended - started, "fetched": done.fetched}


def throughput(args, file: Path, work: Path, rate_mib_s: float = 0.0) -> dict:
    command = [sys.executable, "-m", "tests.fake_hub", REPO, str(file), "--rate-mib-s", str(rate_mib_s)]
    server = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        hub_url = server.stdout.readline().strip()
        resolve = f"{hub_url}/{REPO}/resolve/main/{file.name}"
        size = file.stat().st_size
        runs = {"curl_s": [], "fitchat_transfer_s": [], "fitchat_total_s": []}
        for i in range(args.runs + 1):  # run 0 warms the page cache and the server; not counted
            out = work / "curl.out"
            curl_s = curl_run(resolve, out)
            out.unlink()
            models = work / "models"
            fc = fitchat_run(hub_url, models)
            shutil.rmtree(models)
            assert fc["fetched"] == size
            if i:
                runs["curl_s"].append(curl_s)
                runs["fitchat_transfer_s"].append(fc["transfer_s"])
                runs["fitchat_total_s"].append(fc["total_s"])
        med = {k: statistics.median(v) for k, v in runs.items()}
        return {"size_bytes": size, "link_mib_s": rate_mib_s or None, "runs": runs, "median_s": med,
                "curl_mib_s": size / MIB / med["curl_s"], "fitchat_mib_s": size / MIB / med["fitchat_transfer_s"],
                "fitchat_with_sha256_mib_s": size / MIB / med["fitchat_total_s"],
                "ratio": med["curl_s"] / med["fitchat_transfer_s"]}
    finally:
        server.stdin.close()
        server.wait(10)


def resume(file: Path, work: Path) -> dict:
    hub = FakeHub()
    hub.add_repo(REPO, {file.name: file}, ("gguf",))
    hub.start()
    try:
        f = hub.file(REPO, file.name)
        client = HubClient(endpoint=hub.url, token=False)
        listing = client.listing(REPO)
        request = DownloadRequest(REPO, listing.revision, group_gguf(listing.files)[0][0].files)
        # 1. the connection drops at 50 %: the downloader retries from where it stopped
        hub.cut_once[f.sha256] = f.size // 2
        done = Downloader(work / "m1", client).run(request)
        served = hub.served_bytes(REPO, file.name)
        cut = {"served": served, "refetched": served - f.size, "fetched": done.fetched}
        # 2. cancel at ~50 %, then a second run resumes the part
        hub.reset_counters()
        hub.rate_mib_s = 400
        cancel = threading.Event()
        try:
            Downloader(work / "m2", client).run(request, lambda p: p.done >= f.size // 2 and cancel.set(), cancel)
        except DownloadCancelled:
            pass
        hub.rate_mib_s = 0.0
        kept = sum(p.stat().st_size for p in (work / "m2").rglob("*.part"))
        first_served = hub.served_bytes(REPO, file.name)
        hub.reset_counters()
        done = Downloader(work / "m2", client).run(request)
        received = kept + done.fetched
        return {"cut_at_half": cut, "cancel_then_resume": {
            "kept_bytes": kept, "second_run_served": hub.served_bytes(REPO, file.name),
            "second_run_fetched": done.fetched,
            "refetched": received - f.size, "first_run_served": first_served,
            "in_socket_buffers_at_cancel": first_served - kept}}
    finally:
        hub.stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--link-mib-s", type=float, nargs="*", default=[119.0, 476.0],
                    help="more series, the server pacing each download to these speeds (119 MiB/s: a 1 Gbit/s link, "
                         "476: 4 Gbit/s)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitchat-bench-") as tmp:
        work = Path(tmp)
        file = make_file(work, args.size_mib)
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_before": os.getloadavg(),
                  "throughput": throughput(args, file, work),
                  "throughput_paced_links": [throughput(args, file, work, rate) for rate in args.link_mib_s],
                  "resume": resume(file, work), "load_after": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
