"""Activities of ``smartcard_personalization`` (see its YAML for the flow).

The context keeps:

- ``user``: the login, DN and directory attributes (the only source of
  subject data for the certificates);
- ``token``: the card the agent reported (id, serial, model …, confirmed,
  its card profile and key slots);
- ``card_plan``: which certificate types this card gets, with which key,
  and the ones it cannot hold with their ``skip_reason``
  (:mod:`.planning`), decided when the card is reported;
- ``certificates``: one entry per certificate type with its key request
  and its progress: ``pending`` → ``requested`` (child forked) →
  ``issued`` → ``installed``; or ``kept`` when a still-valid certificate
  on this card is kept; or ``skipped`` (with ``skip_reason``) when the
  card cannot hold it;
- ``current``: the index of the entry being worked on.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from openxpki_py_token.capabilities import CardCapabilities
from openxpki_py_token.errors import WHOLE_CARD_CODES

from ..audit import append_audit
from ..crypto.csr import ExpectedKey, public_key_fingerprint
from ..directory import base as _directory_errors  # noqa: F401 - named in the YAML's on_error and retry
from ..errors import PolicyViolation, UnexpectedStep
from ..services import pki
from ..workflow.context import ActivityContext
from ..workflow.errors import FieldRefused
from ..workflow.registry import Registry
from .attestation import CARD_ATTESTED, key_origin
from .enrollment import confirm_pairing, revoke_workflow_access
from .planning import plan_for_card
from .temporary import stand_in_for
from .tokens import TokenInfo, check_token, lock_usable_card, register_token, valid_certificates_on_token

callables = Registry()

OPEN = ("pending", "requested", "issued")
# What a state with a deadline waits for, in words for the user's page.
WAITED_FOR = {
    "WAIT_FOR_TOKEN": "for your card to be reported by the token agent",
    "CONFIRM_TOKEN": "for you to confirm the card",
    "WAIT_FOR_CSR": "for the card to make a key pair",
    "WAIT_FOR_INSTALL": "for the certificate to be written to the card",
}


def _policy(ctx: ActivityContext) -> Any:
    return pki(ctx).config.personalization


def _claim_lifetime(ctx: ActivityContext) -> timedelta:
    return timedelta(seconds=_policy(ctx).enrollment.unproven_claim_lifetime)


def current_entry(ctx: ActivityContext) -> dict[str, Any]:
    return ctx["certificates"][ctx["current"]]  # type: ignore[no-any-return]


def _pop_inputs(ctx: ActivityContext, *names: str) -> None:
    # The engine keeps a manual action's inputs in the context; the
    # activities copy what matters into their own structure instead.
    for name in names:
        ctx.context.pop(name, None)


@callables.activity("load_user_from_directory", reads_only=True)
def load_user_from_directory(ctx: ActivityContext) -> None:
    """Subject data comes from the directory and nowhere else."""
    user = pki(ctx).directory.find_user(ctx.creator)
    ctx["user"] = {"login": user.login, "dn": user.dn, "attributes": dict(user.attributes)}
    ctx.set_attribute("owner", ctx.creator)


def _reported_capabilities(value: Any, ctx: ActivityContext | None = None) -> CardCapabilities:
    """The card's profile and key slots from the report's inputs (a card without them is generic)."""
    inputs = ctx.inputs if ctx is not None else {}
    try:
        slots = json.loads(value) if value else []
        return CardCapabilities.from_report({"card_profile": inputs.get("card_profile", "generic"),
                                             "key_slots": slots})
    except (ValueError, RecursionError) as exc:
        raise FieldRefused(f"not a card's key slots: {exc}", code="token.report_invalid") from None


@callables.validator("card_key_slots")
def card_key_slots(value: str, ctx: ActivityContext) -> None:
    _reported_capabilities(value, ctx)


@callables.activity("register_card")
def register_card(ctx: ActivityContext) -> None:
    """The agent reported a card: registry checks, and the plan for it; the user must confirm it."""
    info = TokenInfo(serial=ctx.inputs["serial"], model=ctx.inputs.get("model", ""),
                     manufacturer=ctx.inputs.get("manufacturer", ""), label=ctx.inputs.get("token_label", ""))
    check_token(ctx.conn, info, owner=ctx.creator, now=ctx.now, claim_lifetime=_claim_lifetime(ctx))
    card = _reported_capabilities(ctx.inputs.get("key_slots"), ctx)
    ctx["token"] = {
        "serial": info.serial, "model": info.model, "manufacturer": info.manufacturer,
        "label": info.label, "card_profile": card.profile, "confirmed": False,
        "agent": int(ctx.inputs["agent"]), "key_slots": [slot.as_api() for slot in card.slots],
    }
    # Shown before the user confirms: this card will be a temporary card, for a few days.
    stand_in = stand_in_for(ctx.conn, pki(ctx).config.cards, owner=ctx.creator, serial=info.serial, now=ctx.now)
    if stand_in is not None:
        ctx["token"]["temporary"] = stand_in.as_context()
    # Planned before the user confirms: the page shows what this card will
    # get, and what it cannot hold (and why) is never attempted.
    ctx["card_plan"] = plan_for_card(_policy(ctx), card).as_context()
    ctx.set_attribute("token_serial", info.serial)
    _pop_inputs(ctx, "serial", "agent", "model", "manufacturer", "token_label", "card_profile", "key_slots")


@callables.activity("confirm_card")
def confirm_card(ctx: ActivityContext) -> None:
    """The user says it is their card, shown by their agent: the card is registered, the agent may act.

    The page sends the agent it showed the phrase of; another agent (a newer
    run, replaced meanwhile) is not confirmed by a click on an older page.
    """
    card = ctx["token"]
    agent = int(ctx.inputs["agent"])
    _pop_inputs(ctx, "agent")
    if agent != card.get("agent") or not confirm_pairing(ctx.conn, ctx.workflow_id, agent, now=ctx.now):
        raise UnexpectedStep("the agent that reported this card has been replaced or has stopped; reload the page "
                             "and compare the phrase again", code="agent.replaced")
    info = TokenInfo(serial=card["serial"], model=card["model"], manufacturer=card["manufacturer"],
                     label=card["label"])
    # Decided again: the permanent card may have come back (or gone) since the card was reported.
    stand_in = stand_in_for(ctx.conn, pki(ctx).config.cards, owner=ctx.creator, serial=info.serial, now=ctx.now,
                            lock=True)
    registered = register_token(ctx.conn, info, owner=ctx.creator, now=ctx.now, claim_lifetime=_claim_lifetime(ctx),
                                stands_in_for=stand_in.permanent_id if stand_in is not None else None,
                                temporary_until=stand_in.until if stand_in is not None else None)
    ctx["token"] = {**card, "id": registered.id, "confirmed": True}
    ctx["token"].pop("temporary", None)
    if stand_in is not None:
        ctx["token"]["temporary"] = stand_in.as_context()


@callables.activity("forget_card")
def forget_card(ctx: ActivityContext) -> None:
    """Not the user's card: forget it, and the agent that reported it."""
    ctx.context.pop("token", None)
    ctx.context.pop("card_plan", None)
    ctx.set_attribute("token_serial")
    revoke_workflow_access(ctx.conn, ctx.workflow_id, now=ctx.now)


@callables.activity("plan_certificates")
def plan_certificates(ctx: ActivityContext) -> None:
    """The confirmed card's plan: one entry per type; still-valid ones kept, impossible ones skipped visibly.

    A skipped type that the policy says must not be left out
    (``on_card_unable: fail``), or a card that can hold none of the types,
    ends the personalization here, with the reason, before any key is made.
    """
    token = ctx["token"]
    plan = ctx.get("card_plan") or plan_for_card(
        _policy(ctx), CardCapabilities(token.get("card_profile", "generic"))).as_context()
    entries = []
    types = {cert_type.name: cert_type for cert_type in _policy(ctx).certificates}
    for planned in plan["types"]:
        entry: dict[str, Any] = {**planned, "status": "pending" if planned["status"] == "planned" else "skipped"}
        entry["key_origin"] = types[entry["type"]].key_origin
        if types[entry["type"]].require_attestation:
            entry["require_attestation"] = True
        if entry["status"] == "pending" and (keep_days := _keep_valid_days(ctx, entry["type"])) is not None:
            horizon = ctx.now + timedelta(days=keep_days)
            kept = valid_certificates_on_token(ctx.conn, token["id"], entry["profile"], horizon)
            if kept:
                entry.update(status="kept", serial=kept[0])
        entries.append(entry)
    _refuse_unsuitable_card(entries, plan["card_profile"])
    for entry in entries:
        if entry["status"] == "skipped":
            _record_skip(ctx, entry, plan["card_profile"])
    ctx["certificates"] = entries
    ctx["current"] = next((i for i, e in enumerate(entries) if e["status"] == "pending"), len(entries))
    skipped = [f"{e['type']} ({e['skip_reason']})" for e in entries if e["status"] == "skipped"]
    ctx.note = (f"{plan['card_profile']} card: " + ", ".join(e["type"] for e in entries if e["status"] != "skipped")
                + (f"; not on this card: {', '.join(skipped)}" if skipped else ""))


def _keep_valid_days(ctx: ActivityContext, type_name: str) -> int | None:
    configured = next((t for t in _policy(ctx).certificates if t.name == type_name), None)
    return configured.keep_valid_days if configured is not None else None


def _record_skip(ctx: ActivityContext, entry: dict[str, Any], card_profile: str) -> None:
    """A type this card cannot hold: on the record, with the stable reason a later import can act on."""
    append_audit(ctx.conn, actor=ctx.actor, role=ctx.role, event="personalization.type_skipped",
                 outcome="skipped", target=f"workflow:{ctx.workflow_id}",
                 details={"type": entry["type"], "skip_reason": entry["skip_reason"], "reason": entry["reason"],
                          "card_profile": card_profile, "token_serial": ctx["token"]["serial"]})


def _refuse_unsuitable_card(entries: list[dict[str, Any]], card_profile: str) -> None:
    skipped = [e for e in entries if e["status"] == "skipped"]
    required = [e for e in skipped if e.get("on_card_unable") == "fail"]
    if required:
        e = required[0]
        raise PolicyViolation(f"the {e['type']} certificate cannot be made on this card ({e['skip_reason']}): "
                              f"{e['reason']}", code="card.unable")
    if len(skipped) == len(entries):
        reasons = "; ".join(f"{e['type']}: {e['reason']}" for e in skipped) or "the policy gives it no certificate"
        raise PolicyViolation(f"this {card_profile} card can hold none of the certificates ({reasons}); "
                              "use another card", code="card.unsuitable")


@callables.condition("certificates_pending")
def certificates_pending(ctx: ActivityContext) -> bool:
    return any(e["status"] in OPEN for e in ctx["certificates"])


@callables.activity("request_certificate")
def request_certificate(ctx: ActivityContext) -> None:
    """Check the CSR made on the card, then fork the issuance child and wait for it."""
    entry = current_entry(ctx)
    if ctx.inputs["cert_type"] != entry["type"]:
        raise UnexpectedStep(
            f"the server is waiting for the {entry['type']} certificate's request, not {ctx.inputs['cert_type']}",
            code="task.unexpected",
        )
    lock_usable_card(ctx.conn, int(ctx["token"]["id"]))  # lost, returned, … since it was confirmed: nothing more
    key = entry["key"]
    expected = ExpectedKey(key["algorithm"], size=key.get("size"), curve=key.get("curve"))
    csr_pem: str = ctx.inputs["csr"]
    checked = pki(ctx).ca.check_csr(ctx.conn, csr_pem.encode("ascii"), entry["profile"], expected_key=expected)
    origin, attested = key_origin(ctx.inputs.get("attestation"), public_key=checked.csr.public_key(),
                                  required=bool(entry.get("require_attestation")), cert_type=entry["type"],
                                  card_serial=ctx["token"]["serial"], trust=_policy(ctx).attestation, now=ctx.now)
    child = ctx.fork("certificate_issuance", {
        "csr": csr_pem,
        "profile": entry["profile"],
        "subject": ctx["user"]["attributes"],
        "owner": ctx.creator,
        "token_id": ctx["token"]["id"],
        "expected_key": {k: str(v) for k, v in key.items()},  # a map field holds text
        # card-attested only with a verified attestation; else only the agent says the card made it.
        "key_origin": origin,
        # a temporary card's certificates live a few days (never longer than the profile says)
        **({"validity_days": temporary["validity_days"]} if (temporary := ctx["token"].get("temporary")) else {}),
    })
    entry.update(status="requested", child_id=child, key_id_used=ctx.inputs["key_id"].lower(),
                 csr_sha256=public_key_fingerprint(checked.csr.public_key()), key_origin=origin)
    if attested is not None:
        entry["attestation"] = attested
    if origin == CARD_ATTESTED and attested is not None:
        append_audit(ctx.conn, actor=ctx.actor, role=ctx.role, event="key.attested",
                     target=f"workflow:{ctx.workflow_id}",
                     details={"cert_type": entry["type"], "csr_sha256": entry["csr_sha256"], **attested})
    _pop_inputs(ctx, "cert_type", "key_id", "csr", "attestation")


@callables.activity("record_card_unable")
def record_card_unable(ctx: ActivityContext) -> None:
    """The agent cannot do this type on this card: skip it visibly, or fail, as the policy says.

    Never wait for a step no party can complete (an OpenPGP card's decryption
    key cannot sign the CSR that proves possession).
    """
    entry = current_entry(ctx)
    if ctx.inputs["cert_type"] != entry["type"]:
        raise UnexpectedStep(
            f"the server is waiting for the {entry['type']} certificate, not {ctx.inputs['cert_type']}",
            code="task.unexpected")
    code, reason = ctx.inputs["code"], ctx.inputs.get("reason") or "the card cannot do this step"
    ctx.note = f"{entry['type']}: {code}: {reason}"
    if code in WHOLE_CARD_CODES:  # e.g. a card personalized elsewhere: no type can be made on it
        entry.update(status="failed", reason=f"the card was refused: {reason}")
        raise PolicyViolation(f"this card cannot be personalized here ({code}): {reason}", code=code)
    if entry.get("on_card_unable", "skip") == "fail":
        entry.update(status="failed", reason=f"the card cannot: {reason}")
        raise PolicyViolation(f"the {entry['type']} certificate cannot be made on this card ({code}): {reason}",
                              code="card.unable")
    # Found only when trying (an older agent's report, or a card that said less than it does):
    # skipped like a planned skip, with its own stable reason.
    entry.update(status="skipped", skip_reason="card_unable", reason=f"{reason} [{code}]")
    ctx["current"] = next((i for i, e in enumerate(ctx["certificates"]) if e["status"] == "pending"),
                          len(ctx["certificates"]))
    _pop_inputs(ctx, "cert_type", "code", "reason")


@callables.activity("collect_certificate", reads_only=True)
def collect_certificate(ctx: ActivityContext) -> None:
    """The child finished: take its certificate, or its reason for failing."""
    entry = current_entry(ctx)
    child = next((c for c in ctx.children() if c.id == entry["child_id"]), None)
    if child is None or not child.succeeded:
        reason = "the issuance workflow is missing"
        if child is not None:
            failure = child.context.get("failure") or {}
            rejection = child.context.get("rejection") or {}
            if rejection.get("by") == ctx.creator:
                reason = "you withdrew the request"
            elif rejection.get("expired"):
                reason = str(rejection["reason"])
            elif rejection.get("reason"):
                reason = f"rejected by an RA Operator: {rejection['reason']}"
            else:
                reason = failure.get("message") or child.last_error or child.state
        entry.update(status="failed", reason=str(reason))
        ctx["failure"] = {"action": "issue", "code": "issuance.failed",
                          "message": f"the {entry['type']} certificate was not issued: {reason}"}
        return
    entry.update(status="issued", serial=child.context["certificate_serial"],
                 certificate_pem=child.context["certificate_pem"])
    ctx.add_attribute("certificate_serial", child.context["certificate_serial"])


@callables.activity("record_installation")
def record_installation(ctx: ActivityContext) -> None:
    """The agent wrote the certificate next to its key and says so."""
    entry = current_entry(ctx)
    if ctx.inputs["cert_type"] != entry["type"] or ctx.inputs["certificate_serial"].lower() != entry["serial"]:
        raise UnexpectedStep(
            f"the receipt names {ctx.inputs['cert_type']} {ctx.inputs['certificate_serial']}, but the card "
            f"should be installing {entry['type']} {entry['serial']}",
            code="task.unexpected",
        )
    if entry.get("escrow_id") is not None:
        from ..escrow.personalization import check_key_proof

        check_key_proof(ctx, entry, ctx.inputs.get("key_proof"))
    entry["status"] = "installed"
    entry.pop("certificate_pem", None)  # it is in the certificate table; the context need not carry it
    # The card's earlier certificate of this profile is replaced: revoke it as superseded.
    for serial in valid_certificates_on_token(ctx.conn, ctx["token"]["id"], entry["profile"], ctx.now):
        if serial != entry["serial"]:
            pki(ctx).ca.revoke_certificate(ctx.conn, int(serial, 16), "superseded", actor=ctx.actor,
                                               role=ctx.role)
    ctx["current"] = next((i for i, e in enumerate(ctx["certificates"]) if e["status"] == "pending"),
                          len(ctx["certificates"]))
    _pop_inputs(ctx, "cert_type", "certificate_serial", "key_proof")


@callables.activity("record_expiry")
def record_expiry(ctx: ActivityContext) -> None:
    """A wait ran past its deadline with nobody acting: end the personalization, visibly.

    Like a cancellation: codes and agents stop working, certificates issued
    but never installed on the card are revoked.  The user starts again.
    """
    waited_for = WAITED_FOR.get(ctx.state, ctx.state)
    _end(ctx, "expire", "personalization.expired",
         f"nothing happened for too long while waiting {waited_for}; open the page again to start over")


@callables.activity("record_cancellation")
def record_cancellation(ctx: ActivityContext) -> None:
    """Codes stop working; certificates issued but never installed on the card are revoked.

    The agent's credential may stay: a cancelled workflow offers it nothing
    to do, and it learns from its next task that the user cancelled.
    """
    _end(ctx, "cancel", "personalization.cancelled", ctx.inputs.get("reason") or "cancelled by the user")


def _end(ctx: ActivityContext, action: str, code: str, message: str) -> None:
    """Record why the personalization ends; no code works any more; issued, uninstalled certificates are revoked."""
    ctx["failure"] = {"action": action, "code": code, "message": message}
    revoke_workflow_access(ctx.conn, ctx.workflow_id, now=ctx.now, credentials=False)
    for entry in ctx.get("certificates") or []:
        if entry["status"] == "issued":
            pki(ctx).ca.revoke_certificate(ctx.conn, int(entry["serial"], 16), "cessationOfOperation",
                                               actor=ctx.actor, role=ctx.role)
            entry["status"] = "revoked"
