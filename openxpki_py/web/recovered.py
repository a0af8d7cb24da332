"""A recovered key collected by its owner ("My certificates" → *Collect*): the one page that shows it.

Two Key Recovery Officers released the recovery to the key's owner (see
:mod:`openxpki_py.escrow.recovery`); the owner, in their own SSO session and
role User, collects it with a CSRF-checked POST.  The answer is the only
place the PKCS#12 (a ``data:`` download link) and its one-time password
ever exist outside the server's memory: nothing is stored to be shown
again, and the page is ``Cache-Control: no-store``.  Anyone but the owner
is told "not found"; a second collection is refused.  Both are audited.
"""

from __future__ import annotations

import base64

from werkzeug.wrappers import Response

from ..escrow import recovery
from . import errors
from .console.common import form_text, services
from .context import RequestContext
from .mine import USER_ROLES
from .views import view


@view("/certificates/recovered/<int:wf_id>", methods=("POST",), roles=USER_ROLES, needs="console")
def my_recovered_key(ctx: RequestContext, wf_id: int) -> Response:
    if form_text(ctx, "confirm") != "yes":
        raise errors.BadRequest("tick the box to confirm: the key and its password are shown once, on the next page")
    collected = recovery.collect_recovered_key(services(ctx).workflows, wf_id, login=ctx.login)
    response = ctx.render("recovered_key.mako", cert_type=collected.cert_type, password=collected.password,
                          pkcs12=base64.b64encode(collected.pkcs12).decode(),
                          filename=f"{collected.owner}-{collected.cert_type}-recovered.p12")
    response.headers["Cache-Control"] = "no-store"
    return response
