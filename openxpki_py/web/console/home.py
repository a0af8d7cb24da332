"""``/console``: the operator's start page (and, as JSON, the session's role and CSRF token for scripts)."""

from __future__ import annotations

from werkzeug.wrappers import Response

from ...console import policy
from ..context import RequestContext
from ..views import view
from .common import OPERATORS, json_answer, wants_json


@view("/console", roles=OPERATORS, needs="console")
def console_home(ctx: RequestContext) -> Response:
    if wants_json(ctx):
        assert ctx.session is not None
        return json_answer({"login": ctx.login, "role": ctx.role, "csrf_token": ctx.session.csrf_token,
                            "may": sorted(a for a in policy.ALLOWED if policy.may(ctx.role, a))})
    return ctx.render("console/home.mako", may=lambda action: policy.may(ctx.role, action),
                      message=ctx.take_flash())
