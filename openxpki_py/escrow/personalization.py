"""Escrowed certificate types in ``smartcard_personalization``: the hooks its activities and the agent API call.

For a type with ``key_origin: escrowed`` the personalization does not ask
the card for a key and a CSR.  ``generate_escrowed_key`` (state
ESCROW_KEY) makes the key pair on the server, seals it in the HSM's
custody and forks the usual issuance child with a CSR the escrowed key
signed in memory, so every CSR check (key as requested, never certified
before, approval) applies unchanged.  Once issued, the agent's task is
``import_key``: it fetches the key sealed for its own ephemeral key
(:func:`deliver_to_agent`), imports it onto the card, writes the
certificate and answers the challenge (RSA: a decryption, EC: ECDH on
the card) in its receipt
(:func:`check_key_proof`).
"""

from __future__ import annotations

from typing import Any, cast

from openxpki_py_token.key_transport import (
    PROOF_RSA_OAEP,
    RSA_PROOFS,
    TransportRefused,
    transport_context,
    unb64,
)
from openxpki_py_token.keyspec import KeySpec

from ..errors import ConfigError, PolicyViolation, UnexpectedStep
from ..workflow.context import ActivityContext
from ..workflow.registry import Registry
from .service import KeyEscrow, KeyProofRefused

callables = Registry()

#: Recorded with the certificate (certificate.key_origin) and in its audit row.
KEY_ORIGIN = "server-escrowed"


def escrow_of(services: Any) -> KeyEscrow:
    escrow = getattr(services, "escrow", None)
    if escrow is None:
        raise ConfigError("a certificate type is escrowed but the instance has no escrow key (escrow.key)")
    return cast(KeyEscrow, escrow)


def _current(ctx: ActivityContext) -> dict[str, Any]:
    return ctx["certificates"][ctx["current"]]  # type: ignore[no-any-return]


@callables.condition("escrowed_key_next")
def escrowed_key_next(ctx: ActivityContext) -> bool:
    """The next open certificate's key is made on the server, not on the card."""
    entries = ctx["certificates"]
    current = ctx.get("current", len(entries))
    return bool(current < len(entries) and entries[current].get("key_origin") == "escrowed"
                and entries[current]["status"] == "pending")


@callables.activity("generate_escrowed_key")
def generate_escrowed_key(ctx: ActivityContext) -> None:
    """Make, escrow and request the certificate in one transaction: a failure leaves no record behind."""
    entry = _current(ctx)
    key = entry["key"]
    spec = KeySpec("rsa", rsa_bits=key.get("size")) if key["algorithm"] == "rsa" else \
        KeySpec("ec", curve=key.get("curve"))
    made = escrow_of(ctx.services).generate(
        ctx.conn, owner=ctx.creator, cert_type=entry["type"], profile=entry["profile"], spec=spec,
        workflow_id=ctx.workflow_id, actor=ctx.actor, role=ctx.role)
    child = ctx.fork("certificate_issuance", {
        "csr": made.csr_pem, "profile": entry["profile"], "subject": ctx["user"]["attributes"],
        "owner": ctx.creator, "token_id": ctx["token"]["id"],
        "expected_key": {k: str(v) for k, v in key.items()}, "key_origin": KEY_ORIGIN,
    })
    entry.update(status="requested", child_id=child, key_id_used=entry["key_id"],
                 csr_sha256=made.public_key_sha256, escrow_id=made.id)
    ctx.note = f"{entry['type']}: key generated on the server, escrowed as record {made.id}"


def import_task(entry: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The agent's task for an escrowed entry in WAIT_FOR_INSTALL: import, then install."""
    return {**task, "task": "import_key", "usage": entry["usage"], "key": entry["key"]}


def check_key_proof(ctx: ActivityContext, entry: dict[str, Any], proof_text: Any) -> None:
    """Called by ``record_installation``: the receipt must carry the card's answer to the challenge."""
    try:
        proof = unb64(proof_text, "key_proof")
    except TransportRefused:
        raise KeyProofRefused("the receipt for an escrowed key must carry key_proof (the card's "
                              "decryption of the delivery's challenge)") from None
    escrow_of(ctx.services).check_proof(ctx.conn, int(entry["escrow_id"]), proof, token_id=ctx["token"]["id"],
                                        serial=entry["serial"], actor=ctx.actor, now=ctx.now)


def deliver_to_agent(view: Any, escrow: KeyEscrow, conn: Any, *, login: str, cert_type: str,
                     agent_key: str, rsa_proof: str = PROOF_RSA_OAEP) -> dict[str, Any]:
    """``POST /api/v1/escrowed-key``: the current step's key, sealed for this agent run's transport key.

    Only in WAIT_FOR_INSTALL of an escrowed entry, for the type the
    personalization is at; the caller has checked the credential (bound to
    this workflow, phrase confirmed) and the card.  ``rsa_proof``: how the
    card can decrypt an RSA challenge (OAEP, or PKCS#1 v1.5 for OpenPGP cards).
    """
    entries = view.context.get("certificates") or []
    current = view.context.get("current", len(entries))
    entry = entries[current] if view.state == "WAIT_FOR_INSTALL" and current < len(entries) else None
    if entry is None or entry.get("escrow_id") is None or entry["type"] != cert_type:
        raise UnexpectedStep(f"no escrowed {cert_type} key is waiting for this card now ({view.state})",
                             code="escrow.not_now")
    if rsa_proof not in RSA_PROOFS:
        raise PolicyViolation(f"rsa_proof must be one of {', '.join(RSA_PROOFS)}", code="escrow.rsa_proof")
    if not isinstance(agent_key, str):
        raise PolicyViolation("send agent_key: the agent's ephemeral X25519 public key", code="escrow.agent_key")
    context = transport_context(view.id, cert_type, entry["serial"])
    # The card plan says whether the card keeps earlier keys next to this one (OpenPGP: one decryption slot).
    sealed = escrow.deliver(conn, int(entry["escrow_id"]), agent_key=agent_key, context=context, actor=login,
                            workflow_id=view.id, with_history=bool(entry.get("key_history", True)),
                            rsa_proof=rsa_proof)
    return {**sealed, "cert_type": cert_type, "serial": entry["serial"]}
