"""A user's own certificates and cards ("My certificates" in the menu)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from werkzeug.wrappers import Response

from ..db.certstore import list_certificates
from ..db.schema import certificate, token
from ..personalization.tokens import list_tokens
from . import errors
from .context import RequestContext
from .views import view

USER_ROLES = frozenset({"User"})


@view("/certificates", roles=USER_ROLES, needs="personalization")
def my_certificates(ctx: RequestContext) -> Response:
    with ctx.app.db.connect() as conn:
        certs = list_certificates(conn, owner=ctx.login, limit=500)
        cards = {row["id"]: row for row in list_tokens(conn, owner=ctx.login)}
        # a card released to someone else still names the certificates issued for it
        missing = {c["token_id"] for c in certs if c["token_id"] and c["token_id"] not in cards}
        if missing:
            cards.update({r["id"]: r for r in conn.execute(select(token).where(token.c.id.in_(missing))).mappings()})
    return ctx.render("certificates.mako", certs=certs, cards=cards, now=datetime.now(timezone.utc))


def certificate_download(db: Any, serial: str, owner: str) -> Response:
    """The owner's certificate as a PEM file; anyone else's (or none) is "not found"."""
    with db.connect() as conn:
        der = conn.execute(select(certificate.c.der).where(certificate.c.serial == serial,
                                                           certificate.c.owner == owner)).scalar()
    if der is None:  # not there, or not yours: the same answer
        raise errors.PageNotFound()
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return Response(pem, mimetype="application/x-pem-file",
                    headers={"Content-Disposition": f'attachment; filename="{serial}.pem"'})


@view("/certificates/<serial>.pem", roles=USER_ROLES, needs="personalization")
def my_certificate_download(ctx: RequestContext, serial: str) -> Response:
    return certificate_download(ctx.app.db, serial, ctx.login)
