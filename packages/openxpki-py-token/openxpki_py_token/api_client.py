"""The JSON API v1 over HTTPS, with nothing but the standard library.

The agent runs on users' PCs, so it adds no dependency: ``urllib`` with an
``ssl`` context that always verifies the server (system CAs or ``--ca-file``).
Plain http is accepted only for a server on this machine and only when asked
for explicitly (the demo and the tests run Apache on http://127.0.0.1).

Redirects are refused rather than followed: urllib would forward the bearer
token to whichever host the redirect names.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__ as _version
from .errors import FieldProblem, ProtocolError, ServerRefused, ServerUnreachable, UsageError

log = logging.getLogger("openxpki_py_token")

API_PREFIX = "api/v1/"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Gateway answers: 503 says the request was not handled (the application
# rolls its transaction back before it answers 503 server.unavailable; a
# proxy answers it without forwarding), 502/504 only that the answer is lost.
_NOT_HANDLED_STATUS = frozenset({503})
_TRANSIENT_STATUS = frozenset({502, 503, 504})
# A server's Retry-After is honoured up to this; our own backoff doubles up to
# _MAX_BACKOFF.  Both stay within the client's retry window (--timeout).
_MAX_RETRY_AFTER, _MAX_BACKOFF = 60.0, 30.0


def api_base_url(server: str, *, allow_http_localhost: bool) -> str:
    """The server URL as the web page shows it, checked, ending in ``/``."""
    parts = urllib.parse.urlsplit(server.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UsageError(f"--server {server!r} is not an https:// URL; copy it from the web page")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise UsageError(f"--server {server!r} must not carry a user, query or fragment")
    if parts.scheme == "http":
        if parts.hostname not in _LOCAL_HOSTS:
            raise UsageError(f"--server {server!r}: plain http is refused; the server must use https")
        if not allow_http_localhost:
            raise UsageError(f"--server {server!r}: plain http to this machine needs "
                             "--insecure-http-for-localhost")
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifying context: the system's CAs, or only the CA file given."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--ca-file {ca_file}: not a readable PEM CA certificate file "
                         f"({exc.strerror or exc})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None  # the 3xx then surfaces as an HTTPError, reported below


@dataclass(frozen=True)
class ApiAnswer:
    """A 2xx answer: its status and JSON object."""

    status: int
    body: dict[str, Any]

    def next_task(self) -> dict[str, Any] | None:
        """The next task an action's answer carries (``next_task``, docs/api.md), or None.

        None (an older server, or a call that does not know it): the agent asks
        ``GET /task``.  A carried task is checked like a polled one.
        """
        task = self.body.get("next_task")
        if task is None:
            return None
        if not isinstance(task, dict):
            raise ProtocolError(f"the server's next_task is not a task object: {task!r}")
        return task


class ApiClient:
    """Calls ``<server>/api/v1/…``; maps every failure to an agent error.

    Transient failures (HTTP 502/503/504, a refused, broken or timed-out
    connection) are tried again with backoff until ``retry_window`` seconds
    after the client was made (the agent passes its ``--timeout``), and at
    most ``retries`` times if that is given.
    """

    def __init__(self, server: str, *, ca_file: Path | None = None,
                 allow_http_localhost: bool = False, timeout: float = 30.0,
                 retry_window: float = 60.0, retries: int | None = None, backoff: float = 1.0,
                 notify: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base_url = api_base_url(server, allow_http_localhost=allow_http_localhost)
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.access_token: str | None = None
        self._notify = notify
        self._sleep = sleep
        self._clock = clock
        # A monotonic deadline: a suspended laptop or a clock change cannot stretch it.
        self.retry_until = clock() + retry_window
        handlers: list[Any] = [_NoRedirect()]
        if urllib.parse.urlsplit(self.base_url).hostname in _LOCAL_HOSTS:
            handlers.append(urllib.request.ProxyHandler({}))  # this machine: never via a proxy
        if self.base_url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=tls_context(ca_file)))
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, path: str) -> str:
        return self.base_url + API_PREFIX + path

    def get(self, path: str) -> ApiAnswer:
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any], *, idempotent: bool = True) -> ApiAnswer:
        """``idempotent=False`` for a call that must not run twice (trading the one-time code)."""
        return self.call("POST", path, body, idempotent=idempotent)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             idempotent: bool = True) -> ApiAnswer:
        """One API call, tried again while the failure is transient and time is left.

        A call that is not idempotent is tried again only when the server
        certainly did not handle it (the connection was refused, or HTTP 503);
        after a broken connection, a timeout or a 502/504 its effect is
        unknown, and sending it again could spend it twice.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._call_once(method, path, body)
            except _Transient as exc:
                if not idempotent and exc.may_have_run:
                    raise exc.error from None
                remaining = self.retry_until - self._clock()
                if remaining <= 0 or (self.retries is not None and attempt >= self.retries):
                    raise exc.error from None
                delay = min(self._delay(attempt, exc.retry_after), remaining)
                note = f"{exc.brief}; trying again in {delay:.1f} s…"
                if self._notify is not None:
                    self._notify(note)
                log.info("%s %s: %s", method, path, note)
                self._sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, _MAX_RETRY_AFTER)
        # Exponential with jitter: agents cut off by the same outage do not
        # all come back in the same second.
        base = min(self.backoff * 2.0 ** (attempt - 1), _MAX_BACKOFF)
        return base * random.uniform(0.75, 1.0)

    def _call_once(self, method: str, path: str, body: dict[str, Any] | None) -> ApiAnswer:
        url = self.url(path)
        headers = {"Accept": "application/json", "User-Agent": f"openxpki-py-token/{_version}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.access_token is not None:
            headers["Authorization"] = f"Bearer {self.access_token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        log.debug("%s %s", method, url)  # never the headers: they carry the token
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = response.status
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._refusal(method, url, exc) from None
        except urllib.error.URLError as exc:
            raise self._unreachable(url, exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(url, exc) from None
        return ApiAnswer(status, _json_object(raw, url, status))

    def _refusal(self, method: str, url: str, exc: urllib.error.HTTPError) -> Exception:
        status = exc.code
        if 300 <= status < 400:
            return ProtocolError(f"{url} redirected to {exc.headers.get('Location', '?')}; "
                                 "check --server (copy it from the web page)")
        retry_after = _retry_after(exc.headers.get("Retry-After"))
        try:
            raw = exc.read()
        except (OSError, http.client.HTTPException):
            raw = b""
        error = _error_object(raw)
        if error is None:
            reason = f"{method} {url} answered HTTP {status} {exc.reason}"
            if status in _TRANSIENT_STATUS:
                return _Transient(ServerUnreachable(f"{reason}: the server is not available right now; "
                                                    "try again later", code="server.unavailable"),
                                  retry_after, may_have_run=status not in _NOT_HANDLED_STATUS,
                                  brief=f"the server is not available (HTTP {status} {exc.reason})")
            if status >= 500:
                # The server (or a proxy in front of it) failed: --server is right.
                return ServerUnreachable(f"{reason}: the server failed; try again later, or tell your "
                                         "PKI administrator if it keeps happening", code="server.error")
            return ProtocolError(f"{reason}, not an API error; check --server "
                                 "(copy it from the web page)")
        code, message, fields = error
        refused = ServerRefused(message, code=code, status=status, retry_after=retry_after, fields=fields)
        if status in _TRANSIENT_STATUS:
            return _Transient(refused, retry_after, may_have_run=status not in _NOT_HANDLED_STATUS,
                              brief=f"the server is not available ({message}, HTTP {status})")
        return refused

    def _unreachable(self, url: str, reason: object) -> Exception:
        if isinstance(reason, ssl.SSLCertVerificationError):
            detail = reason.verify_message or str(reason)
            return ServerUnreachable(
                f"the TLS certificate of {_origin(url)} cannot be trusted ({detail}); if your "
                "organisation uses its own CA, pass it with --ca-file", code="network.tls")
        if isinstance(reason, ssl.SSLError):
            return ServerUnreachable(f"TLS with {_origin(url)} failed ({reason.reason or reason}); "
                                     "check --server", code="network.tls")
        if isinstance(reason, socket.gaierror):
            return ServerUnreachable(f"cannot resolve {urllib.parse.urlsplit(url).hostname!r}; "
                                     "check --server and your network")
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return _Transient(ServerUnreachable(f"{_origin(url)} did not answer within "
                                                f"{self.timeout:.0f} s; check your network"), None,
                              may_have_run=True, brief=f"{_origin(url)} did not answer")
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        # Refused: nothing was sent.  Reset or closed: the request may have arrived.
        return _Transient(ServerUnreachable(f"cannot reach {_origin(url)} ({text}); check "
                                            "--server and your network"), None,
                          may_have_run=not isinstance(reason, ConnectionRefusedError),
                          brief=f"cannot reach {_origin(url)} ({text})")


class _Transient(Exception):
    """A failure that may pass; ``may_have_run`` if the server may have handled the request.

    ``error`` is raised when no retry is left; ``brief`` is the progress line
    before a retry (without the final advice).
    """

    def __init__(self, error: Exception, retry_after: float | None, *, may_have_run: bool,
                 brief: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.may_have_run = may_have_run
        self.brief = brief


def _json_object(raw: bytes, url: str, status: int) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise ProtocolError(f"{url} answered HTTP {status} without a JSON object; check --server "
                            "(copy it from the web page)")
    return value


def _error_object(raw: bytes) -> tuple[str, str, tuple[FieldProblem, ...]] | None:
    """``(code, message, fields)`` from ``{"error": {"code": …, "message": …, "fields": […]}}``."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    error = value.get("error") if isinstance(value, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return None
    message = error.get("message")
    return (error["code"], message if isinstance(message, str) and message else error["code"],
            _field_problems(error.get("fields")))


def _field_problems(value: Any) -> tuple[FieldProblem, ...]:
    """The refused input values an error lists; entries not in the documented shape are skipped."""
    if not isinstance(value, list):
        return ()
    return tuple(FieldProblem(item["field"], item["code"], item["message"]) for item in value
                 if isinstance(item, dict) and all(isinstance(item.get(k), str) for k in ("field", "code", "message")))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: not worth parsing for a hint
    return seconds if seconds >= 0 else None


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
