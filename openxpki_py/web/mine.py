"""A user's own certificates and cards ("My certificates" in the menu)."""

from __future__ import annotations

from datetime import datetime, timezone

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from werkzeug.wrappers import Response

from .. import roles
from ..console.cards import available
from ..db.certstore import list_certificates, owned_certificate_der
from ..db.schema import key_escrow
from ..escrow.recovery import waiting_for_owner
from ..personalization.temporary import valid_until
from ..personalization.tokens import list_tokens, tokens_by_id
from .context import RequestContext
from .views import view

USER_ROLES = frozenset({roles.USER})


@view("/certificates", roles=USER_ROLES, needs="personalization")
def my_certificates(ctx: RequestContext) -> Response:
    with ctx.app.db.connect() as conn:
        certs = list_certificates(conn, owner=ctx.login, limit=500)
        cards = {row["id"]: row for row in list_tokens(conn, owner=ctx.login)}
        # a card released to someone else still names the certificates issued for it
        released = {c["token_id"] for c in certs if c["token_id"] and c["token_id"] not in cards}
        cards.update(tokens_by_id(conn, released))
        # keys with an escrow record: a copy is in the HSM's custody, recoverable by two officers
        escrowed = set(conn.execute(select(key_escrow.c.public_key_sha256)
                                    .where(key_escrow.c.owner == ctx.login)).scalars())
        temporary = {i: c["temporary_until"] or valid_until(conn, i)
                     for i, c in cards.items() if c["kind"] == "temporary"}
    services = ctx.app.console
    # recovered keys two Key Recovery Officers released to this person: theirs to collect
    recovered = waiting_for_owner(services.workflows, ctx.login) if services is not None and escrowed else []
    # what the owner may do to their own cards themselves (lifecycle: owner_may), when the console runs here
    lifecycle = services.config.cards.lifecycle if services is not None else None
    own = {c["serial"]: [t.name for t in available(lifecycle, c, ctx.role, own_card=True)]
           for c in cards.values() if c["owner"] == ctx.login} if lifecycle is not None else {}
    # PIN unblocks under way for the user's cards (also those the help desk started for them)
    unblocks = ctx.app.unblock.open_for_owner(ctx.login) if ctx.app.unblock is not None else []
    return ctx.render("certificates.mako", certs=certs, cards=cards, now=datetime.now(timezone.utc),
                      escrowed=escrowed, recovered=recovered, temporary=temporary, own_transitions=own,
                      lifecycle_transitions=list(lifecycle.transitions.values()) if lifecycle is not None else [],
                      unblocks=unblocks,
                      message=ctx.take_flash(), available=ctx.app.available)


def pem_download(der: bytes, serial: str) -> Response:
    """A certificate as a PEM file to save."""
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return Response(pem, mimetype="application/x-pem-file",
                    headers={"Content-Disposition": f'attachment; filename="{serial}.pem"'})


@view("/certificates/<serial>.pem", roles=USER_ROLES, needs="personalization")
def my_certificate_download(ctx: RequestContext, serial: str) -> Response:
    with ctx.app.db.connect() as conn:
        der = owned_certificate_der(conn, serial, ctx.login)  # not there, or not yours: "not found" alike
    return pem_download(der, serial)
