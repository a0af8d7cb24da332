"""The ``web`` section: session cookie, timeouts and the /token deep link.

::

    web:
      session:
        cookie_name: openxpki_session
        cookie_secure: true      # false ONLY for a plain-http demo on localhost
        idle_timeout: 1800       # seconds without a request
        absolute_timeout: 28800  # seconds since login
      deep_link:
        workflow: smartcard_personalization
        role: User               # granted (its handler runs) when /token is opened
      public_url: https://pki.example.com/openxpki   # what the token agent is told to use
      trusted_proxies: [10.0.0.5]  # reverse proxies whose X-Forwarded-For names the client (rate limits)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

from .. import roles
from ..configreader import Reader
from .client_address import TrustedProxies

_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class SessionConfig:
    cookie_name: str = "openxpki_session"
    cookie_secure: bool = True
    idle_timeout: timedelta = timedelta(minutes=30)
    absolute_timeout: timedelta = timedelta(hours=8)


@dataclass(frozen=True)
class DeepLinkConfig:
    workflow: str = "smartcard_personalization"
    role: str = roles.USER  # must be one of auth.roles


@dataclass(frozen=True)
class WebConfig:
    session: SessionConfig = field(default_factory=SessionConfig)
    deep_link: DeepLinkConfig = field(default_factory=DeepLinkConfig)
    # The application's URL as users' PCs reach it.  None: taken from the
    # request, which is wrong behind a TLS-terminating proxy.
    public_url: str | None = None
    # Only these may tell the client's address in X-Forwarded-For (default: nobody).
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)


def _parse_session(r: Reader) -> SessionConfig:
    defaults = SessionConfig()
    name = r.str("cookie_name", defaults.cookie_name)
    if not _COOKIE_NAME.match(name):
        raise r.error("cookie_name", "letters, digits, '_' or '-' (at most 64)")
    idle = r.int("idle_timeout", int(defaults.idle_timeout.total_seconds()), minimum=60)
    absolute = r.int("absolute_timeout", int(defaults.absolute_timeout.total_seconds()), minimum=60)
    if absolute < idle:
        raise r.error("absolute_timeout", f"at least idle_timeout ({idle})")
    cfg = SessionConfig(cookie_name=name, cookie_secure=r.bool("cookie_secure", defaults.cookie_secure),
                        idle_timeout=timedelta(seconds=idle), absolute_timeout=timedelta(seconds=absolute))
    r.finish()
    return cfg


def _parse_deep_link(r: Reader) -> DeepLinkConfig:
    defaults = DeepLinkConfig()
    cfg = DeepLinkConfig(workflow=r.str("workflow", defaults.workflow), role=r.str("role", defaults.role))
    r.finish()
    return cfg


def parse_web_config(r: Reader) -> WebConfig:
    """Parse the ``web`` section (see the module docstring)."""
    public_url = r.str("public_url", None)
    if public_url is not None and not public_url.startswith(("https://", "http://")):
        raise r.error("public_url", "the application's URL, e.g. https://pki.example.com/openxpki")
    proxies = r.raw("trusted_proxies", [])
    if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
        raise r.error("trusted_proxies", "a list of addresses or networks, e.g. [10.0.0.5, 10.1.0.0/16]")
    try:
        trusted = TrustedProxies.parse(proxies)
    except ValueError as exc:
        raise r.error("trusted_proxies", f"addresses or networks ({exc})") from None
    cfg = WebConfig(session=_parse_session(r.section("session")),
                    deep_link=_parse_deep_link(r.section("deep_link")),
                    public_url=public_url.rstrip("/") if public_url else None,
                    trusted_proxies=trusted)
    r.finish()
    return cfg
