"""Sign-in end to end in Chromium against a real OpenID Connect provider on the loopback interface.

`oidc-provider-mock` is a real provider (discovery document, authorization form, tokens, end of session);
the served app has an ``[auth]`` section pointing at it and ``TLVIZ_ALLOWED_USERS``. Each person signs in
in their own browser context (own cookies), as two people on two machines would.
"""

from __future__ import annotations

import re

import pytest

from browser import CHROMIUM, CHROMIUM_ARGS, oidc_provider, save_screenshot, sign_in, streamlit_server, team_secrets
from tlviz import signin

pytestmark = pytest.mark.browser

ALLOWED = "alice@example.com, @team.example"


@pytest.fixture(scope="module")
def provider():
    """A real OpenID Connect provider on 127.0.0.1; yields its base URL."""
    with oidc_provider() as base:
        yield base


@pytest.fixture(scope="module")
def team_server(provider, tmp_path_factory):
    """The app with sign-in on (its own secrets file and runs folder); yields its URL."""
    d = tmp_path_factory.mktemp("team")
    secrets = team_secrets(d, provider)
    env = {"TLVIZ_RUNS_DIR": str(d / "runs"), signin.ENV_ALLOWED: ALLOWED}
    with streamlit_server(env=env, args=["--secrets.files", str(secrets)]) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def person(browser):
    """A new browser context (its own cookies: another person's machine) and its page."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(90_000)
    return page


def no_exception(page):
    assert page.locator('[data-testid="stException"]').count() == 0


def test_two_people_at_once_each_see_only_their_own_runs(team_server, browser):
    alice, bob = person(browser), person(browser)
    sign_in(alice, team_server, "alice@example.com")
    sign_in(bob, team_server, "bob@team.example")  # both signed in at once
    save_screenshot(alice, "team_signed_in.png")

    alice.goto(team_server + "/finetune")
    alice.get_by_role("heading", name="Fine-tuning runs").wait_for()
    alice.get_by_label("Epochs", exact=True).fill("1")
    alice.get_by_label("Epochs", exact=True).press("Enter")
    alice.get_by_text("Regularization, BatchNormalization and schedule").click()  # the label is in there
    alice.get_by_label("Label (shown in the run list)").fill("alices-run")
    alice.get_by_label("Label (shown in the run list)").press("Enter")
    alice.get_by_role("button", name="Start run").click()
    alice.get_by_text("Download the fine-tuned model").first.wait_for(timeout=240_000)
    assert alice.get_by_text("alices-run").count() > 0
    no_exception(alice)

    # Bob, signed in meanwhile, sees no runs, and no address leads him to Alice's space.
    bob.goto(team_server + "/finetune")
    bob.get_by_text("No runs yet").wait_for()
    assert bob.get_by_text("alices-run").count() == 0
    alice_owner = signin.owner_of({"iss": None, "sub": "alice@example.com"})
    for ws in (alice_owner, "0" * 24):
        bob.goto(team_server + f"/finetune?ws={ws}")
        bob.get_by_text("No runs yet").wait_for()
        assert bob.get_by_text("alices-run").count() == 0
        assert "ws=" not in bob.url
    no_exception(bob)

    # Alice's runs belong to her, not to a link: signing in from another machine finds them.
    elsewhere = person(browser)
    sign_in(elsewhere, team_server, "alice@example.com")
    elsewhere.goto(team_server + "/finetune")
    elsewhere.get_by_text("alices-run").first.wait_for(timeout=60_000)
    no_exception(elsewhere)
    for page in (alice, bob, elsewhere):
        page.context.close()


def test_a_person_not_on_the_list_is_refused(team_server, browser):
    carol = person(browser)
    sign_in(carol, team_server, "carol@elsewhere.org", expect_in=False)
    carol.get_by_text(re.compile("which is not on this server's list")).wait_for()
    save_screenshot(carol, "team_refused.png")
    assert carol.get_by_text("Model & images").count() == 0
    carol.goto(team_server + "/finetune")  # a page address leads nowhere either
    carol.get_by_text(re.compile("which is not on this server's list")).wait_for()
    assert carol.get_by_role("heading", name="Fine-tuning runs").count() == 0
    carol.context.close()


def test_signing_out_leaves_nothing_visible(team_server, browser):
    alice = person(browser)
    sign_in(alice, team_server, "alice@example.com")
    alice.get_by_role("button", name="Sign out").click()
    alice.wait_for_url("**/end_session**")  # the provider ends its session too (RP-initiated logout)
    alice.get_by_role("button", name="End session").click()
    alice.get_by_role("button", name="Sign in").wait_for()
    for path in ("/", "/finetune", "/diagnose"):  # a bookmarked page asks to sign in, with no "Page not found"
        alice.goto(team_server + path)
        alice.get_by_role("button", name="Sign in").wait_for()
        alice.wait_for_timeout(1000)
        assert alice.get_by_role("dialog").count() == 0
        alice.get_by_role("button", name="Sign in").click(trial=True)  # nothing lies over it
        assert alice.get_by_text("Signed in as").count() == 0
        assert alice.get_by_role("heading", name="Fine-tuning runs").count() == 0
    alice.context.close()
