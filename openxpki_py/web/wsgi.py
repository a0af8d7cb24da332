"""The WSGI entry point mod_wsgi loads (``apache/openxpki_py.wsgi``).

The config path comes from the process environment (``OPENXPKI_PY_CONFIG``)
or, since mod_wsgi daemons do not see Apache's ``SetEnv``, from the first
request's environ; otherwise the default ``/etc/openxpki-py/config.yaml``.
The app is built on the first request, so a broken config shows up as a 500
with the reason in Apache's error log, not as a daemon that will not start.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..errors import OpenXPKIError

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

CONFIG_ENV = "OPENXPKI_PY_CONFIG"


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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        app = self._app
        if app is None:
            with self._lock:
                if self._app is None:
                    path = os.environ.get(CONFIG_ENV) or environ.get(CONFIG_ENV)
                    try:
                        self._app = self._factory(path)
                    except OpenXPKIError as exc:
                        log.error("cannot start the web application: %s", exc.message)
                        return _unavailable(start_response)
                    except Exception:
                        log.exception("cannot start the web application")
                        return _unavailable(start_response)
                app = self._app
        return app(environ, start_response)


def _unavailable(start_response: StartResponse) -> list[bytes]:
    body = b"The service is not configured correctly; the reason is in the web server's error log.\n"
    start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8"),
                                                 ("Content-Length", str(len(body)))])
    return [body]


def _build(path: str | None) -> WSGIApplication:
    from ..config import load_config
    from ..services import Services
    from .app import create_app

    config = load_config(path)
    return create_app(config, Services(config))


def make_application() -> LazyApplication:
    configure_logging()
    return LazyApplication()
