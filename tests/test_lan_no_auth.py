"""Serving the network (issue 13, hole 4): each browser keeps its own chat when there are no logins,
and only the Host names the app serves on are accepted (DNS rebinding off loopback)."""
from __future__ import annotations

import time

import httpx
import pytest
from gradio_client import Client

from cli.browser_id import COOKIE
from cli.origin_guard import OriginGuard
from starlette.datastructures import Headers
from tests.conftest import start_app
from tests.test_many_users import send, texts

pytestmark = pytest.mark.real_model


def test_host_allow_list_table():
    guard = OriginGuard(None, loopback_only=False, allowed_hosts=frozenset({"192.168.1.20", "chat.home"}))
    for host, ok in (("192.168.1.20:7860", True), ("chat.home:7860", True), ("CHAT.HOME", True),
                     ("127.0.0.1:7860", True), ("[::1]:7860", True), ("localhost:7860", True),
                     ("evil.example:7860", False), ("192.168.1.21:7860", False), ("", False),
                     ("chat.home.evil.example", False)):
        assert (guard.problem(Headers({"host": host})) is None) is ok, host
    assert OriginGuard(None, loopback_only=False).problem(Headers({"host": "any.example"})) is None  # --share


@pytest.fixture(scope="module")
def open_lan_app(tmp_path_factory):
    app = start_app(["--listen", "--insecure-no-auth", "--allowed-host", "chat.home", "--ctx", "1024"],
                    tmp_path_factory.mktemp("lan-no-auth"))
    yield app
    app.stop()


def test_a_rebinding_host_is_refused_while_listening(open_lan_app):
    url = open_lan_app.url
    port = open_lan_app.port
    r = httpx.get(url + "gradio_api/info", headers={"Host": f"evil.example:{port}"}, timeout=10)
    assert r.status_code == 403 and "Host not allowed" in r.text
    # Unloading through a rebinding page is what the attack did; it is refused before Gradio runs.
    r = httpx.post(url + "gradio_api/call/unload_model", json={"data": []},
                   headers={"Host": f"evil.example:{port}"}, timeout=10)
    assert r.status_code == 403
    for host in (f"127.0.0.1:{port}", f"chat.home:{port}"):
        assert httpx.get(url + "gradio_api/info", headers={"Host": host}, timeout=10).status_code == 200


def test_each_browser_keeps_its_own_chat_without_logins(open_lan_app):
    first = httpx.get(open_lan_app.url, timeout=20)
    assert COOKIE in first.cookies  # a browser gets its id with the page
    alice = Client(open_lan_app.url, headers={"Cookie": f"{COOKIE}=alice-browser-0123456789"}, verbose=False)
    bob = Client(open_lan_app.url, headers={"Cookie": f"{COOKIE}=bob-browser-0123456789ab"}, verbose=False)
    deadline = time.monotonic() + 90
    while alice.predict(api_name="/model_status")["status"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    send(alice, "Alice says apples.", max_tokens=4)
    send(bob, "Bob says bananas.", max_tokens=4)
    # A forged identity header is ignored: the middleware sets it from the cookie only.
    mallory = Client(open_lan_app.url, verbose=False,
                     headers={"Cookie": f"{COOKIE}=mallory-browser-01234567", "x-fitchat-browser": "x"})
    again_alice = Client(open_lan_app.url, headers={"Cookie": f"{COOKIE}=alice-browser-0123456789"}, verbose=False)
    assert texts(again_alice.predict(api_name="/restore_chat")[0], "user") == ["Alice says apples."]
    assert texts(bob.predict(api_name="/restore_chat")[0], "user") == ["Bob says bananas."]
    assert texts(mallory.predict(api_name="/restore_chat")[0], "user") == []


@pytest.mark.parametrize("url", ["http://example.com/", "https://example.com/a.png", "HTTP://example.com",
                                 "http%3A%2F%2Fexample.com%2F", "//example.com/x", "http%253A%252F%252Fexample.com"])
def test_the_file_route_refuses_every_web_address(open_lan_app, url):
    for prefix in ("gradio_api/file=", "file="):
        r = httpx.get(open_lan_app.url + prefix + url, timeout=10)
        assert r.status_code == 403 and "never web addresses" in r.text, (prefix, url, r.status_code)


def test_config_does_not_show_the_models_folder(open_lan_app):
    config = httpx.get(open_lan_app.url + "config", timeout=20).text  # the same layout for every user
    assert str(open_lan_app.data_dir) not in config
