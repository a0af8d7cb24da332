"""``/ocsp``: the OCSP responder over HTTP (RFC 6960 appendix A, RFC 5019 §5).

POST carries the DER request as the body; GET carries it base64 (and
URL-encoded) in the path, which caches and proxies can keep.  No SSO, no
cookies, no CSRF: relying parties ask anonymously, and the answer is signed.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse

from werkzeug.wrappers import Response

from .context import RequestContext
from .views import view

OCSP_REQUEST = "application/ocsp-request"
OCSP_RESPONSE = "application/ocsp-response"
MAX_REQUEST = 64 * 1024  # a request is a few hundred bytes; anything large is not one


@view("/ocsp", methods=("POST",), access="public", needs="ocsp")
def ocsp_post(ctx: RequestContext) -> Response:
    body = ctx.request.get_data(cache=False)[:MAX_REQUEST + 1]
    return _answer(ctx, body if len(body) <= MAX_REQUEST else b"")


@view("/ocsp/<path:encoded>", access="public", needs="ocsp")
def ocsp_get(ctx: RequestContext, encoded: str) -> Response:
    try:
        request = base64.b64decode(urllib.parse.unquote(encoded), validate=True)
    except (binascii.Error, ValueError):
        request = b""  # answered as malformedRequest
    response = _answer(ctx, request)
    # RFC 5019 §6.2: GET answers may be cached until their nextUpdate; be modest.
    response.headers["Cache-Control"] = "max-age=60, public, no-transform, must-revalidate"
    return response


def _answer(ctx: RequestContext, request: bytes) -> Response:
    responder = ctx.app.ocsp
    assert responder is not None  # the view exists only when the responder does
    return Response(responder(request), mimetype=OCSP_RESPONSE)
