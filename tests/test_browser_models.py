"""A real browser on the Models tab: search the (local) Hub, open a repo, see each file's fit before
downloading, download the pre-selected one and find it in the library."""
from __future__ import annotations

import pytest

from tests.conftest import ARTIFACTS, start_app
from tests.hub_repos import LLAMA8B, TINY
from tests.test_browser import wait_for

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def app_with_hub(tmp_path_factory, fake_hub):
    data_dir = tmp_path_factory.mktemp("browser-models")
    env = {"HF_ENDPOINT": fake_hub.url, "HF_HOME": str(data_dir / "hf-home"), "HF_HUB_OFFLINE": "0"}
    app = start_app(["--no-default-model"], data_dir, env=env)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(app_with_hub, chromium):
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_with_hub.url)
    page.get_by_role("tab", name="Models").click()
    page.wait_for_selector("#models-query textarea, #models-query input")
    return page


def text(page, selector: str) -> str:
    return page.inner_text(selector)


def open_repo(page, repo: str) -> None:
    box = page.locator("#models-repo input")
    box.fill(repo)
    box.press("Enter")
    page.click("#models-open")


def test_search_open_see_the_fit_download_and_find_it_in_the_library(page, app_with_hub, fake_hub):
    ARTIFACTS.mkdir(exist_ok=True)
    wait_for(lambda: "Models in" in text(page, "#tab-models"), 10, "the Models tab")
    page.locator("#models-query textarea, #models-query input").first.fill("tiny")
    page.click("#models-search")
    wait_for(lambda: TINY in text(page, "#models-results"), 20, "the search results")

    # A big repo first: every file gets its badge from a few MB of header, nothing downloaded.
    open_repo(page, LLAMA8B)
    wait_for(lambda: text(page, "#models-fit").count("GiB") >= 3 and "Reading headers" not in text(page, "#models-fit"),
             60, "the fit of the 8B files")
    fit = page.inner_html("#models-fit")
    assert fit.count('class="fc-badge"') == 3 and "★" in fit
    assert "headers read" in text(page, "#models-summary")
    page.screenshot(path=str(ARTIFACTS / "models-fit.png"), full_page=True)

    open_repo(page, TINY)
    wait_for(lambda: "tiny-Q8_0" in text(page, "#models-fit") and "★" in text(page, "#models-fit"), 60,
             "the fit of the tiny files")
    chosen = page.locator("#models-choice input").input_value()
    assert chosen.startswith("tiny-Q"), chosen

    # On a slow link: bytes, speed and ETA while it runs; Cancel; Download again resumes.
    fake_hub.rate_mib_s = 15
    try:
        page.click("#models-download")
        wait_for(lambda: "ETA" in text(page, "#models-progress") and "MiB/s" in text(page, "#models-progress"), 30,
                 "progress with speed and ETA")
        page.screenshot(path=str(ARTIFACTS / "models-downloading.png"), full_page=True)
        page.click("#models-cancel")
        wait_for(lambda: "Cancelled" in text(page, "#models-progress"), 30, "the cancel")
    finally:
        fake_hub.rate_mib_s = 0
    assert "resumes from there" in text(page, "#models-progress")
    page.click("#models-download")
    wait_for(lambda: "Installed" in text(page, "#models-progress"), 90, "the download to finish")
    assert "every file verified" in text(page, "#models-progress")
    assert "already on disk from an earlier attempt" in text(page, "#models-progress")
    name = "test-org--Tiny-GGUF/" + chosen.split(" ")[0] + ".gguf"
    wait_for(lambda: name in text(page, "#models-library"), 20, "the model in the library")
    assert page.locator("#library-choice input").input_value() == name
    page.screenshot(path=str(ARTIFACTS / "models-downloaded.png"), full_page=True)
    assert (app_with_hub.data_dir / "models" / name).is_file()


CHOICES = "not in the list of choices"  # Gradio's own check of a Dropdown/Radio value, before ours


@pytest.mark.parametrize("api,args,message", [
    ("/reveal_model", ["/etc/passwd"], CHOICES), ("/load_library_model", ["../../x.gguf"], CHOICES),
    ("/ask_delete", ["../../../etc"], CHOICES), ("/delete_model", ["/etc/passwd"], CHOICES),
    ("/open_repo", ["../../etc/passwd"], "is not a repository id"), ("/search_models", ["x", "<img>"], CHOICES),
    ("/download", [None], "Open a repository first")])
def test_handlers_refuse_what_a_client_sends_past_the_dropdowns(app_with_hub, api, args, message):
    from gradio_client.exceptions import AppError

    client = app_with_hub.client()
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name=api)
    assert client.predict(api_name="/model_status")["status"] in ("empty", "ready")  # still up


def test_cluster_machine_kind_shows_the_vllm_plan(page):
    from tests.hub_repos import SAFETENSORS

    ARTIFACTS.mkdir(exist_ok=True)
    wait_for(lambda: "Plan for a cluster" in text(page, "#tab-models"), 10, "the cluster section")
    box = page.locator("#models-repo input")
    box.fill(SAFETENSORS)
    box.press("Enter")
    page.locator("#cluster-profile input").click()
    page.get_by_role("option", name="h100-2x8").click()
    wait_for(lambda: "vllm serve" in text(page, "#cluster-plan"), 20, "the vLLM plan")
    shown = text(page, "#cluster-plan")
    assert f"{SAFETENSORS} on 2 nodes" in shown and "TP" in shown and "tok/s/stream" in shown
    page.locator("#cluster-plan").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "models_cluster_plan.png"), full_page=False)


def test_cluster_profile_picked_with_the_keyboard_plans_and_the_options_fit(page):
    from tests.hub_repos import SAFETENSORS

    box = page.locator("#models-repo input")
    box.fill(SAFETENSORS)
    box.press("Enter")
    profile = page.locator("#cluster-profile input")
    profile.click()
    profile.fill("rtx4090")
    profile.press("ArrowDown")
    profile.press("Enter")
    wait_for(lambda: "4 RTX 4090" in text(page, "#cluster-plan") and "vllm serve" in text(page, "#cluster-plan"),
             20, "the plan for the profile picked with the keyboard",
             seen=lambda: (profile.input_value(), text(page, "#cluster-plan")[:300]))

    page.locator("#cluster-options button").first.click()
    panel = page.locator("#cluster-options").bounding_box()
    for field in ("max_model_len", "gpu_memory_utilization", "goal", "slot_ctx"):
        widget = page.locator(f"#cluster-{field}")
        widget.scroll_into_view_if_needed()
        box = widget.bounding_box()
        assert box["x"] + box["width"] <= panel["x"] + panel["width"] + 1, field  # not cut off at the right
