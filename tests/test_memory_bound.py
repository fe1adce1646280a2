"""Resource bound under abuse (issue 13): the UI process's memory after the whole hardening suite is
within 50 MiB of its start.

The hardening tests that attack a loopback app over HTTP (test_api_limits.py, test_hardening_http.py,
test_hardening_runtime.py) all run against one session app, ``hardening_app`` (tests/conftest.py),
whose RSS is read when it starts, after the embedded model loaded and an ordinary first visit
(tests/http_abuse.py: what a first visit costs, imports, pools, caches, is not a leak; no abuse, so a
leak that grows once and then stays is counted). This test runs last (tests/conftest.py orders it so),
adds two abuse rounds of its own, and compares. Run alone,
it checks the two rounds; in the suite, everything those files did to the app. The LAN-mode and
no-login tests need apps started with other flags, and start their own."""
from __future__ import annotations

import random
import time

import httpx

from tests.http_abuse import abuse_round, rss_mib

BOUND_MIB = 50


def test_memory_after_the_hardening_suite_is_within_50_mib_of_the_start(hardening_app):
    app = hardening_app
    started = time.monotonic()
    rng = random.Random(13)
    for _ in range(2):
        abuse_round(app, rng)
    after = rss_mib(app.proc.pid)
    ran = ", ".join(app.used_by) or "this test alone"
    print(f"hardening app RSS {app.rss_start_mib:.0f} -> {after:.0f} MiB after {ran} "
          f"(last two abuse rounds {time.monotonic() - started:.1f} s)")
    assert after - app.rss_start_mib < BOUND_MIB, f"RSS {app.rss_start_mib:.0f} -> {after:.0f} MiB after {ran}"
    assert httpx.get(app.url + "config", timeout=10).status_code == 200  # and it still serves
