"""Sign-in's rules (tlviz.signin) and the gate's wiring (ui.signin through the router, AppTest).

The whole flow against a real OpenID Connect provider in Chromium is tests/test_signin_browser.py (e2e tier).
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, texts
from browser import free_port
from tlviz import signin
from tlviz.errors import ConfigError

GOOD = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 40,
        "client_id": "tlviz", "client_secret": "s3cret", "server_metadata_url":
        "https://login.example.com/.well-known/openid-configuration"}


# -- the [auth] section -----------------------------------------------------------------------------

def test_a_good_section_reads_its_provider():
    auth = signin.read_auth(GOOD)
    assert auth.providers == ("default",)
    assert auth.metadata_urls["default"] == GOOD["server_metadata_url"]
    assert signin.read_auth(None) is None  # no section: sign-in is off


def test_named_providers_are_read_in_order():
    section = {"redirect_uri": GOOD["redirect_uri"], "cookie_secret": "c" * 40,
               "google": {k: GOOD[k] for k in signin.PROVIDER_KEYS},
               "microsoft": {k: GOOD[k] for k in signin.PROVIDER_KEYS}}
    assert signin.read_auth(section).providers == ("google", "microsoft")


@pytest.mark.parametrize("change, named", [
    ({"redirect_uri": None}, "redirect_uri is missing"),
    ({"redirect_uri": "http://localhost:8501/callback"}, "must be an http(s) address ending in /oauth2callback"),
    ({"cookie_secret": ""}, "cookie_secret is missing"),
    ({"client_secret": None}, "missing client_secret"),
    ({"server_metadata_url": "login.example.com"}, "is not an http(s) address"),
])
def test_every_problem_is_named_with_its_fix(change, named):
    section = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(signin.AuthMisconfigured) as info:
        signin.read_auth(section)
    message = str(info.value)
    assert named in message and "restart tlviz" in message
    assert GOOD["client_secret"] not in message and GOOD["cookie_secret"] not in message  # never echo a secret
    assert isinstance(info.value, ConfigError)


def test_a_provider_name_with_an_underscore_is_refused():
    section = {"redirect_uri": GOOD["redirect_uri"], "cookie_secret": "c" * 40,
               "my_idp": {k: GOOD[k] for k in signin.PROVIDER_KEYS}}
    with pytest.raises(signin.AuthMisconfigured, match=r"\[auth.my_idp\]: a provider name may not contain '_'"):
        signin.read_auth(section)


# -- the allowlist -----------------------------------------------------------------------------------

def test_allowlist_admits_addresses_and_domains_only():
    allowed = signin.parse_allowlist(" Alice@Example.com, @team.example;bob@other.org\n")
    assert allowed.admits("alice@example.com") and allowed.admits("ALICE@example.COM")
    assert allowed.admits("carol@team.example")
    assert allowed.admits("bob@other.org")
    assert not allowed.admits("carol@example.com")
    assert not allowed.admits("mallory@team.example.evil.org")  # a domain is matched whole
    assert not allowed.admits("mallory@evilteam.example")
    assert not allowed.admits(None) and not allowed.admits("")


@pytest.mark.parametrize("text, named", [("alice, @team.example", "'alice'"), ("bob@@x.org", "'bob@@x.org'"),
                                         ("@", "'@'"), (",", "lists nobody")])
def test_a_malformed_allowlist_is_named(text, named):
    with pytest.raises(signin.AuthMisconfigured) as info:
        signin.parse_allowlist(text)
    assert named in str(info.value) and signin.ENV_ALLOWED in str(info.value)


def test_allowlist_unset_admits_everyone_who_signs_in(monkeypatch):
    monkeypatch.delenv(signin.ENV_ALLOWED, raising=False)
    assert signin.allowlist() is None
    monkeypatch.setenv(signin.ENV_ALLOWED, "@team.example")
    assert signin.allowlist().admits("x@team.example")


# -- identities ---------------------------------------------------------------------------------------

def test_owner_token_is_stable_per_account_and_differs_between_people():
    alice = {"iss": "https://idp", "sub": "123", "email": "alice@example.com"}
    assert signin.owner_of(alice) == signin.owner_of({**alice, "name": "Alice B."})  # same account, any browser
    assert signin.owner_of(alice) != signin.owner_of({**alice, "sub": "456"})
    assert signin.owner_of(alice) != signin.owner_of({**alice, "iss": "https://other-idp"})
    assert signin.owner_of({"email": "Bob@x.org"}) == signin.owner_of({"email": "bob@x.org"})
    assert signin.owner_of(alice).startswith("user-") and len(signin.owner_of(alice)) == 29
    with pytest.raises(ValueError):
        signin.owner_of({"name": "nobody"})


# -- the provider's reachability ----------------------------------------------------------------------

def test_probe_names_an_unreachable_provider_and_accepts_a_real_one():
    from oidc_provider_mock import run_server_in_thread

    closed = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    assert "cannot be reached" in signin.probe_provider(closed, timeout=2)
    with run_server_in_thread(port=0) as server:
        base = f"http://localhost:{server.server_port}"
        assert signin.probe_provider(base + "/.well-known/openid-configuration") is None
        assert "answered 404" in signin.probe_provider(base + "/no-such-document")


# -- the gate, through the router ---------------------------------------------------------------------

def _app(secrets=None, user=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if secrets is not None:
        at.secrets["auth"] = secrets
    if user is not None:
        at.user.update(user)
    return at.run()


def test_without_auth_the_app_is_open_as_before(monkeypatch, runs):
    monkeypatch.delenv(signin.ENV_ALLOWED, raising=False)
    at = _app()
    assert not at.exception and "Model & images" in [t.value for t in at.title]
    assert not [b for b in at.button if b.label == "Sign in"]


def test_signed_out_visitor_sees_only_the_sign_in_page(monkeypatch, runs):
    from oidc_provider_mock import run_server_in_thread

    monkeypatch.delenv(signin.ENV_ALLOWED, raising=False)
    with run_server_in_thread(port=0) as server:
        url = f"http://localhost:{server.server_port}/.well-known/openid-configuration"
        at = _app({**GOOD, "server_metadata_url": url}, {"is_logged_in": False})
    assert not at.exception, at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    assert "sign in to see your own runs" in texts(at)
    assert "Model & images" not in [t.value for t in at.title]  # nothing of the app, no model loaded
    assert "model" not in at.session_state or at.session_state["model"] is None


def test_unreachable_provider_is_named_without_a_sign_in_button(monkeypatch, runs):
    monkeypatch.delenv(signin.ENV_ALLOWED, raising=False)
    closed = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    at = _app({**GOOD, "server_metadata_url": closed}, {"is_logged_in": False})
    assert "cannot be reached" in texts(at) and "server_metadata_url" in texts(at)
    assert [b.label for b in at.button] == ["Try again"]


def test_misconfigured_section_stops_everyone_with_the_problem_named(monkeypatch, runs):
    monkeypatch.delenv(signin.ENV_ALLOWED, raising=False)
    at = _app({k: v for k, v in GOOD.items() if k != "cookie_secret"}, {"is_logged_in": True, "email": "a@b.org"})
    assert "Sign-in is misconfigured" in texts(at) and "cookie_secret is missing" in texts(at)
    assert "Model & images" not in [t.value for t in at.title]


def test_an_allowlist_without_auth_never_opens_the_server(monkeypatch, runs):
    monkeypatch.setenv(signin.ENV_ALLOWED, "alice@example.com")
    at = _app()
    assert "there is no [auth] section" in texts(at)
    assert "Model & images" not in [t.value for t in at.title]


def test_a_malformed_allowlist_is_named_on_the_page(monkeypatch, runs):
    monkeypatch.setenv(signin.ENV_ALLOWED, "alice, @team.example")
    at = _app(GOOD, {"is_logged_in": True, "email": "alice@example.com", "sub": "1", "iss": "x"})
    assert "neither an e-mail address nor an @domain: 'alice'" in texts(at)
    assert "Model & images" not in [t.value for t in at.title]


def test_a_person_not_on_the_list_is_told_so(monkeypatch, runs):
    monkeypatch.setenv(signin.ENV_ALLOWED, "alice@example.com, @team.example")
    at = _app(GOOD, {"is_logged_in": True, "email": "carol@elsewhere.org", "sub": "c", "iss": "x"})
    assert "signed in as **carol@elsewhere.org**, which is not on this server's list" in texts(at)
    assert [b.label for b in at.button] == ["Sign out"]
    assert "Model & images" not in [t.value for t in at.title]


def test_a_person_on_the_list_works_in_their_own_space(monkeypatch, runs):
    monkeypatch.setenv(signin.ENV_ALLOWED, "alice@example.com, @team.example")
    bob = {"is_logged_in": True, "email": "bob@team.example", "sub": "b", "iss": "https://idp"}
    at = AppTest.from_file(APP, default_timeout=120)
    at.secrets["auth"] = GOOD
    at.user.update(bob)
    at.query_params["ws"] = "0" * 24  # someone's workspace link: ignored once signed in
    at.run()
    assert not at.exception, at.exception
    assert "Model & images" in [t.value for t in at.title]
    assert "Signed in as **bob@team.example**" in texts(at)
    assert at.session_state["workspace"] == signin.owner_of(bob)
    assert "ws" not in at.query_params
