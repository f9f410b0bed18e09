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
