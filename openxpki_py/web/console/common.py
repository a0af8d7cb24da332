"""What every console view shares: the services, JSON answers, a serial from a URL."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ...errors import NotFound
from .. import errors
from ..context import RequestContext
from ..menu import OPERATOR_ROLES

if TYPE_CHECKING:
    from ...services import Services

OPERATORS = OPERATOR_ROLES
HEX = frozenset("0123456789abcdef")


def services(ctx: RequestContext) -> Services:
    console = ctx.app.console
    assert console is not None  # the views say needs="console"
    return console


def wants_json(ctx: RequestContext) -> bool:
    req = ctx.request
    if req.args.get("format") == "json":
        return True
    best = req.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and req.accept_mimetypes["application/json"] > req.accept_mimetypes["text/html"]


def json_answer(data: Any, status: int = 200) -> Response:
    response = Response(json.dumps(data, default=str, separators=(",", ":")), status=status,
                        mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def done(ctx: RequestContext, message: str, endpoint: str, data: Any, **values: Any) -> Response:
    """After a change: JSON for scripts, else a status line on the next page (post/redirect/get)."""
    if wants_json(ctx):
        return json_answer({"message": message, "result": data})
    ctx.flash(message)
    return redirect(ctx.url_for(endpoint, **values), code=303)


def checked_serial(text: str) -> str:
    """A serial as the store spells it (lowercase hex); anything else names no certificate."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "").lstrip("0")
    if not cleaned or len(cleaned) > 40 or not HEX.issuperset(cleaned):
        raise NotFound(f"'{text[:64]}' is not a certificate serial number (hexadecimal expected)")
    return cleaned


def checked_name(text: str, what: str) -> str:
    """A login or card serial from a URL: control characters (NUL above all) name nothing and never reach the driver."""
    if not text or len(text) > 256 or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise NotFound(f"no {what} {text[:64]!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise NotFound(f"no {what} with that name") from None
    return text


def query_text(ctx: RequestContext, name: str, limit: int = 256) -> str:
    """A search field: control characters and lone surrogates dropped, bounded."""
    value = ctx.request.args.get(name, "")
    cleaned = "".join(ch for ch in value if ord(ch) >= 0x20 and ord(ch) != 0x7F and not 0xD800 <= ord(ch) <= 0xDFFF)
    return cleaned.strip()[:limit]


def form_text(ctx: RequestContext, name: str) -> str:
    value = ctx.request.form.get(name, "")
    return value if isinstance(value, str) else ""


def error_json(exc: HTTPException) -> Response:
    """An error for a script: the status, the stable code and the sentence a page would show."""
    code = exc.answer.code if isinstance(exc, errors.MappedError) else "http." + str(exc.code or 500)
    response = json_answer({"error": {"code": code, "message": exc.description or exc.name}}, exc.code or 500)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response
