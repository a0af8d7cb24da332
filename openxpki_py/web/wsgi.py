"""The WSGI entry point mod_wsgi loads (``apache/openxpki_py.wsgi``).

The config path comes from the process environment (``OPENXPKI_PY_CONFIG``)
or, since mod_wsgi daemons do not see Apache's ``SetEnv``, from the first
request's environ; otherwise the default ``/etc/openxpki-py/config.yaml``.
The app is built on the first request, so a broken config or a database
that cannot be reached shows up as a 503 (JSON under ``/api/``, a page
elsewhere) with the reason in Apache's error log, not as a daemon that will
not start; the next request tries again, so the daemon recovers by itself.
A build that failed slowly (a database server that does not answer, up to
its connect timeout) answers the requests that waited for it at once, and
those of the next moment as long as it took, instead of each trying in turn.
"""

from __future__ import annotations

import html
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from ..errors import OpenXPKIError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

CONFIG_ENV = "OPENXPKI_PY_CONFIG"
#: A failed build that took this long is the answer for as long again (see the module's text).
SLOW_FAILURE_SECONDS = 0.5


def configure_logging() -> None:
    """Log to stderr, which mod_wsgi sends to Apache's error log."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("openxpki-py %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)


class LazyApplication:
    """Builds the real application once, on first use, from the config it finds."""

    def __init__(self, factory: Callable[[str | None], WSGIApplication] | None = None) -> None:
        self._factory = factory or _build
        self._app: WSGIApplication | None = None
        self._lock = threading.Lock()
        self._failed: tuple[float, Exception] | None = None  # (until, why) of a slow failed build

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        app = self._app
        if app is None:
            with self._lock:
                if self._app is None:
                    failed = self._failed
                    if failed is not None and time.monotonic() < failed[0]:
                        return _not_started(environ, start_response, failed[1])
                    path = os.environ.get(CONFIG_ENV) or environ.get(CONFIG_ENV)
                    started = time.monotonic()
                    try:
                        self._app = self._factory(path)
                    except Exception as exc:  # noqa: BLE001 - answered, logged, and tried again (see above)
                        spent = time.monotonic() - started
                        if spent >= SLOW_FAILURE_SECONDS:
                            self._failed = (time.monotonic() + min(spent, 30.0), exc)
                        return _not_started(environ, start_response, exc)
                app = self._app
        return app(environ, start_response)


def _not_started(environ: WSGIEnvironment, start_response: StartResponse, exc: Exception) -> list[bytes]:
    """The answer while the application cannot be built, by the one table (web/errors.py).

    A lost database or a config error is 503 with ``Retry-After``; the token
    agent gets its JSON error (a plain-text page would read to it as "wrong
    --server"), a browser a short page.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from .errors import ErrorAnswer, database_answer, error_answer

    answer: ErrorAnswer
    if isinstance(exc, OpenXPKIError):
        log.error("cannot start the web application: %s: %s", exc.code, exc.message)
        answer = error_answer(exc)
    elif isinstance(exc, SQLAlchemyError):
        log.error("cannot start the web application: the database failed: %s", exc)
        answer = database_answer(exc)
    else:
        log.error("cannot start the web application", exc_info=exc)
        answer = ErrorAnswer(500, "server.error", "the server failed; the details are in its log")
    if str(environ.get("PATH_INFO", "")).startswith("/api/"):
        body = json.dumps(answer.as_json()).encode()
        content_type = "application/json"
    else:
        text = html.escape(answer.page_text or answer.message)
        body = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Service unavailable</title></head>"
                f"<body><h1>Service unavailable</h1><p>{text}</p><p>Error code: {answer.code}</p>"
                "</body></html>\n").encode()
        content_type = "text/html; charset=utf-8"
    status = f"{answer.status} {HTTPStatus(answer.status).phrase}"
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *answer.headers.items()])
    return [body]


def _build(path: str | None) -> WSGIApplication:
    from ..config import load_config
    from ..services import Services
    from .app import create_app

    config = load_config(path)
    services = Services(config)
    try:
        return create_app(config, services)
    except BaseException:
        services.close()  # tried again on the next request: do not keep a pool per attempt
        raise


def make_application() -> LazyApplication:
    configure_logging()
    return LazyApplication()
