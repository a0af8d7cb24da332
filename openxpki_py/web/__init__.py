"""The web application: Werkzeug routing, Mako pages, sessions and CSRF.

``app`` assembles the WSGI callable, ``views`` holds the pages, ``errors``
the HTTP errors (raised by views, rendered in one place), ``render`` the
template lookup, ``menu`` what each role sees and ``wsgi`` the entry point
Apache's mod_wsgi loads.
"""

from __future__ import annotations

from .app import WebApp, create_app

__all__ = ["WebApp", "create_app"]
