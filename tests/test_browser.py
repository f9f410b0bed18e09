"""End to end in a real browser: the served app shows the sample and reacts to the sidebar."""

import os

import pytest

from browser import CHROMIUM, browser_page, streamlit_server

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):  # CI installs it; say loudly why it did not run elsewhere
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)


def test_sample_loaded_and_frozen_model_flagged():
    with streamlit_server() as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("heading", name="Model & images").wait_for()
        page.get_by_text("5 classes match the model's 5 outputs").wait_for()
        # navigate to the freezing page through the sidebar navigation
        page.get_by_role("link", name="Freezing status").click()
        page.get_by_role("heading", name="Freezing status").wait_for()
        page.get_by_text("24,021").first.wait_for()
        # switch to the frozen sample in the sidebar
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name="digits_frozen.keras").click()
        page.get_by_text("No trainable weights").first.wait_for()
        assert page.get_by_text("Freezing status").count() >= 1


def test_page_url_opened_directly_keeps_router_and_sidebar():
    """A bookmarked or reloaded page URL must still go through app.py's navigation."""
    with streamlit_server() as url, browser_page() as page:
        page.goto(url + "/normalization")
        page.get_by_role("heading", name="Normalization").wait_for()
        page.get_by_text("Best setting").first.wait_for()
        nav = page.locator('[data-testid="stSidebarNav"]')
        nav.get_by_text("Freezing status").wait_for()
        assert nav.get_by_text("app", exact=True).count() == 0  # no legacy auto-discovered list
        assert page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').count() >= 2


def test_fine_tuning_run_in_the_browser(tmp_path):
    with streamlit_server(env={"TLVIZ_RUNS_DIR": str(tmp_path / "runs")}) as url, browser_page() as page:
        page.goto(url + "/finetune")
        page.get_by_role("heading", name="Fine-tuning runs").wait_for()
        page.get_by_role("button", name="Start run").click()
        page.get_by_text("freezing works").first.wait_for(timeout=180_000)
        page.get_by_text("Download the fine-tuned model").first.wait_for(timeout=30_000)
        assert any((tmp_path / "runs").iterdir())
