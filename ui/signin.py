"""Sign-in (optional): with an ``[auth]`` section in ``.streamlit/secrets.toml`` every page asks for it.

`gate` runs first in the router. Without ``[auth]`` (and without ``TLVIZ_ALLOWED_USERS``) it does nothing
and tlviz works as an open server, each browser session in its own ``?ws=`` workspace. With it:

- a visitor who is not signed in sees only the sign-in page (one button per provider, ``st.login``);
- a signed-in person not on ``TLVIZ_ALLOWED_USERS`` is told so, with a sign-out button, and sees nothing else;
- a signed-in person on the list gets their own space: `ui.state.workspace` returns their owner token
  (`tlviz.signin.owner_of`), the sidebar says who is signed in and has a sign-out button;
- a section that cannot work (a missing key, an unparsable secrets file, a malformed allowlist, the
  Authlib package missing), or a provider that cannot be reached, is named on the page for whoever runs
  the server, and nobody gets in: tlviz never falls back to an open server when sign-in was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st

from tlviz import signin
from tlviz.errors import ConfigError

#: Session-state key of the signed-in person's owner token (None when sign-in is off).
OWNER_KEY = "signed_in_owner"
#: Session-state key of the signed-in person's name as the page shows it.
NAME_KEY = "signed_in_name"


@dataclass
class Gate:
    """What `gate` decided: run the app for `owner` (None: sign-in is off), or show `page` instead."""

    owner: str | None = None
    page: Callable[[], None] | None = None


def _secrets_files() -> list[Path]:
    return [Path(p).expanduser() for p in (st.get_option("secrets.files") or [])]


def _auth_section():
    """The ``[auth]`` section (None when there is none).

    Raises:
        AuthMisconfigured: a secrets file exists but cannot be read: whether it asks for sign-in cannot be told.
    """
    if not st.secrets.load_if_toml_exists():
        broken = [str(p) for p in _secrets_files() if p.is_file()]
        if broken:
            raise signin.AuthMisconfigured(
                f"The secrets file {broken[0]} cannot be read (not valid TOML?). It may ask for sign-in, so tlviz "
                "does not open until it is fixed.")
        return None
    return st.secrets.get("auth")


@st.cache_data(ttl=30, show_spinner=False)
def _provider_problem(url: str) -> str | None:
    return signin.probe_provider(url)


def _misconfigured(message: str) -> Callable[[], None]:
    def page() -> None:
        st.title("tlviz")
        st.error(f"**Sign-in is misconfigured.** {message}", icon=":material/lock:")
        st.caption("This message is for whoever runs this server. Visitors: please tell them.")
    return page


def _sign_in(auth: signin.AuthConfig) -> Callable[[], None]:
    def page() -> None:
        st.title("tlviz")
        st.write("This tlviz server is shared by a team: sign in to see your own runs, uploads and jobs.")
        for provider in auth.providers:
            problem = _provider_problem(auth.metadata_urls[provider])
            label = "Sign in" if provider == "default" else f"Sign in with {provider.title()}"
            if problem:
                st.error(f"{problem} Whoever runs this server: check `server_metadata_url` in the [auth] section "
                         "and that this machine can reach the provider.", icon=":material/cloud_off:")
                st.button("Try again", key=f"retry_{provider}", on_click=_provider_problem.clear)
                continue
            if st.button(label, key=f"login_{provider}", type="primary", icon=":material/login:"):
                st.login(provider)
    return page


def _sign_out() -> None:
    """Forget everything this session held (nothing of theirs stays visible), then sign out at the provider."""
    st.session_state.clear()
    st.logout()
    st.stop()


def _refused(name: str) -> Callable[[], None]:
    def page() -> None:
        st.title("tlviz")
        st.error(f"You are signed in as **{name}**, which is not on this server's list of people who may use it "
                 f"({signin.ENV_ALLOWED}). Ask whoever runs it to add you, or sign in with another account.",
                 icon=":material/block:")
        if st.button("Sign out", icon=":material/logout:"):
            _sign_out()
    return page


def gate() -> Gate:
    """Decide who may see the app (see the module docstring). Call before anything else draws.

    Returns:
        A `Gate`: ``page`` set means show only that page (sign-in, refused, misconfigured).
    """
    try:
        auth = signin.read_auth(_auth_section())
        allowed = signin.allowlist()
    except ConfigError as exc:
        return Gate(page=_misconfigured(str(exc)))
    if auth is None:
        if allowed is not None:  # an allowlist asks for sign-in: never open the server without it
            return Gate(page=_misconfigured(
                f"{signin.ENV_ALLOWED} is set, but there is no [auth] section in .streamlit/secrets.toml, so "
                "nobody can sign in. Add the [auth] section (see docs/team.md), or unset "
                f"{signin.ENV_ALLOWED} to run an open server."))
        return Gate()
    if not st.user.is_logged_in:
        st.session_state.pop(OWNER_KEY, None)
        return Gate(page=_sign_in(auth))
    identity = st.user.to_dict()
    name = signin.display_name(identity)
    if allowed is not None and not allowed.admits(identity.get("email")):
        return Gate(page=_refused(name))
    owner = signin.owner_of(identity)
    if st.session_state.get(OWNER_KEY) not in (None, owner):  # another person in this browser session
        st.session_state.clear()
    st.session_state[OWNER_KEY] = owner
    st.session_state[NAME_KEY] = name
    return Gate(owner=owner)


def signed_in_box() -> None:
    """In the sidebar: who is signed in, and a sign-out button (nothing when sign-in is off)."""
    name = st.session_state.get(NAME_KEY)
    if not st.session_state.get(OWNER_KEY) or not name:
        return
    with st.sidebar:
        st.caption(f":material/person: Signed in as **{name}**")
        if st.button("Sign out", key="sign_out", icon=":material/logout:"):
            _sign_out()
