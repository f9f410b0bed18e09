"""Sign-in for a team server: checking the ``[auth]`` section, the allowlist, and whose space a person gets.

tlviz signs people in the Streamlit way (``st.login``, OpenID Connect): an ``[auth]`` section in
``.streamlit/secrets.toml`` turns it on (`ui.signin` does the page side). This module holds what can be
decided without Streamlit, so the command line and the tests check the same rules:

- `read_auth` checks an ``[auth]`` section and names every problem in it (a missing redirect URI, a
  provider without its client id, ...): a misconfigured section stops the app with that message for
  whoever runs the server; it never falls back to letting everyone in;
- `allowlist` reads ``TLVIZ_ALLOWED_USERS`` (e-mail addresses and ``@domain`` entries);
- `probe_provider` fetches a provider's discovery document, so an unreachable provider is named on the
  sign-in page instead of failing after a click;
- `owner_of` turns a signed-in identity into the owner token that runs, jobs and results are filed under
  (``user-`` and 24 hex digits: the same person gets the same space from any browser).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from tlviz import config
from tlviz.errors import AuthMisconfigured

ENV_ALLOWED = "TLVIZ_ALLOWED_USERS"
#: Keys every provider needs (top level of ``[auth]`` for the default provider, else in ``[auth.NAME]``).
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
#: Keys of ``[auth]`` itself that are not providers.
_GENERAL_KEYS = {"redirect_uri", "cookie_secret", "expose_tokens", "client_kwargs", *PROVIDER_KEYS}
_EMAIL = re.compile(r"^[^@\s,;]+@([A-Za-z0-9-]+\.)+[A-Za-z0-9-]{2,}$")
_DOMAIN = re.compile(r"^@([A-Za-z0-9-]+\.)+[A-Za-z0-9-]{2,}$")
#: What `read_auth`'s message ends with.
FIX = ("Fix the [auth] section of .streamlit/secrets.toml (see docs/team.md) and restart tlviz; until then "
       "nobody can sign in, and tlviz does not open without sign-in.")


@dataclass(frozen=True)
class AuthConfig:
    """A checked ``[auth]`` section.

    Args:
        providers: provider names for ``st.login``: ``"default"`` for the keys at the top of ``[auth]``,
            else the names of the ``[auth.NAME]`` sections, in file order.
        metadata_urls: each provider's ``server_metadata_url`` (its OpenID Connect discovery document).
        redirect_uri: where the provider sends people back (``…/oauth2callback``).
    """

    providers: tuple[str, ...]
    metadata_urls: dict[str, str]
    redirect_uri: str


def _is_url(text) -> bool:
    if not isinstance(text, str):
        return False
    parsed = urlparse(text)
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def _provider_sections(section: Mapping) -> dict[str, Mapping]:
    named = {k: v for k, v in section.items() if k not in _GENERAL_KEYS and isinstance(v, Mapping)}
    if any(k in section for k in PROVIDER_KEYS) or not named:
        return {"default": {k: section[k] for k in PROVIDER_KEYS if k in section}, **named}
    return named


def auth_problems(section) -> list[str]:
    """Every problem of an ``[auth]`` section, as sentences (empty: it can work).

    Args:
        section: the ``[auth]`` section as a mapping (``st.secrets["auth"]``).

    Returns:
        The problems, each naming the key and what to put there.
    """
    if not isinstance(section, Mapping):
        return ["[auth] must be a table of keys (redirect_uri, cookie_secret, client_id, ...)."]
    problems = []
    if importlib.util.find_spec("authlib") is None:
        problems.append("Sign-in needs the Authlib package: pip install -r requirements-auth.txt "
                        "(streamlit[auth]).")
    redirect = section.get("redirect_uri")
    if not redirect:
        problems.append("redirect_uri is missing: set it to this server's address followed by /oauth2callback, "
                        "e.g. https://tlviz.example.com/oauth2callback.")
    elif not _is_url(str(redirect).replace("{port}", "8501")) or not str(redirect).endswith("/oauth2callback"):
        problems.append(f"redirect_uri = {redirect!r} must be an http(s) address ending in /oauth2callback.")
    secret = section.get("cookie_secret")
    if not isinstance(secret, str) or not secret.strip():
        problems.append("cookie_secret is missing: set it to a long random string "
                        "(python -c \"import secrets; print(secrets.token_hex(32))\").")
    providers = _provider_sections(section)
    for name, provider in providers.items():
        where = "[auth]" if name == "default" else f"[auth.{name}]"
        if "_" in name:
            problems.append(f"{where}: a provider name may not contain '_' (Streamlit refuses it); rename it.")
        missing = [k for k in PROVIDER_KEYS if not provider.get(k)]
        if missing:
            problems.append(f"{where} is missing {', '.join(missing)} (every provider needs "
                            f"{', '.join(PROVIDER_KEYS)}).")
        url = provider.get("server_metadata_url")
        if url and not _is_url(url):
            problems.append(f"{where}: server_metadata_url = {url!r} is not an http(s) address (it is the "
                            "provider's /.well-known/openid-configuration).")
    return problems


def read_auth(section) -> AuthConfig | None:
    """Check an ``[auth]`` section.

    Args:
        section: ``st.secrets["auth"]`` (a mapping), or None when the secrets have no ``[auth]`` section.

    Returns:
        The `AuthConfig`, or None when `section` is None (sign-in is off).

    Raises:
        AuthMisconfigured: the section cannot work; the message lists every problem and how to fix it.
    """
    if section is None:
        return None
    problems = auth_problems(section)
    if problems:
        raise AuthMisconfigured("Sign-in is switched on but cannot work: " + " ".join(problems) + " " + FIX)
    providers = _provider_sections(section)
    return AuthConfig(tuple(providers), {n: str(p["server_metadata_url"]) for n, p in providers.items()},
                      str(section["redirect_uri"]))


@dataclass(frozen=True)
class Allowlist:
    """Who may use the server: exact e-mail addresses and whole domains (lower case)."""

    emails: frozenset[str]
    domains: frozenset[str]

    def admits(self, email: str | None) -> bool:
        """Whether a person signed in with `email` is on the list (no e-mail: never)."""
        if not email or "@" not in str(email):
            return False
        email = str(email).strip().lower()
        return email in self.emails or email[email.rindex("@"):] in self.domains


def parse_allowlist(text: str) -> Allowlist:
    """Read an allowlist: e-mail addresses and ``@domain`` entries, separated by commas, semicolons or spaces.

    Args:
        text: the list.

    Returns:
        The `Allowlist`.

    Raises:
        AuthMisconfigured: an entry is neither an address nor ``@domain``, or the list is empty
            (the message names the entries).
    """
    entries = [e for e in re.split(r"[\s,;]+", text.strip()) if e]
    bad = [e for e in entries if not (_EMAIL.match(e) or _DOMAIN.match(e))]
    if bad:
        raise AuthMisconfigured(
            f"{ENV_ALLOWED} has entries that are neither an e-mail address nor an @domain: "
            f"{', '.join(repr(b) for b in bad)}. Write e.g. {ENV_ALLOWED}='alice@example.com, @example.org' "
            "and restart tlviz.")
    if not entries:
        raise AuthMisconfigured(f"{ENV_ALLOWED} is set but lists nobody. Unset it to admit everyone who signs in.")
    low = [e.lower() for e in entries]
    return Allowlist(frozenset(e for e in low if not e.startswith("@")), frozenset(e for e in low if e.startswith("@")))


def allowlist() -> Allowlist | None:
    """``TLVIZ_ALLOWED_USERS``, read: None when unset (everyone who signs in is admitted).

    Raises:
        AuthMisconfigured: a malformed entry (named).
    """
    text = config.raw(ENV_ALLOWED)
    return None if text is None else parse_allowlist(text)


def probe_provider(url: str, timeout: float = 4.0) -> str | None:
    """Fetch a provider's OpenID Connect discovery document.

    Args:
        url: ``server_metadata_url``.
        timeout: seconds to wait. Defaults to 4.

    Returns:
        None when it answers with a document naming an authorization endpoint; else what went wrong,
        as a sentence for whoever runs the server.
    """
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (an http(s) URL, checked)
            doc = json.loads(response.read(1_000_000))
    except urllib.error.HTTPError as exc:
        return f"The sign-in provider answered {exc.code} {exc.reason} for {url}."
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"The sign-in provider at {url} cannot be reached ({reason})."
    except ValueError:
        return f"{url} did not answer with an OpenID Connect discovery document (not JSON)."
    if not isinstance(doc, dict) or not doc.get("authorization_endpoint"):
        return f"{url} is not an OpenID Connect discovery document (it names no authorization_endpoint)."
    return None


def owner_of(identity: Mapping) -> str:
    """The owner token of a signed-in person: their runs, jobs and results are filed under it.

    Args:
        identity: the identity token's claims (``st.user``): ``iss`` and ``sub`` when present (stable for
            one account at one provider), else ``email``.

    Returns:
        ``"user-"`` and 24 hex digits.

    Raises:
        ValueError: the identity names neither a subject nor an e-mail address.
    """
    iss, sub, email = identity.get("iss"), identity.get("sub"), identity.get("email")
    if sub:
        basis = f"{iss or ''}|{sub}"
    elif email:
        basis = f"email|{str(email).strip().lower()}"
    else:
        raise ValueError("The sign-in provider named neither a subject nor an e-mail address for this person.")
    return "user-" + hashlib.sha256(basis.encode()).hexdigest()[:24]


def display_name(identity: Mapping) -> str:
    """How the page names the signed-in person: their e-mail address, else their name, else their subject."""
    return str(identity.get("email") or identity.get("name") or identity.get("sub") or "unknown")
