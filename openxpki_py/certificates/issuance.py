"""Certificate issuance: check the request, then sign it with the CA key.

Both steps call the CA with the action's connection, so the stored CSR,
the certificate, its audit row and the workflow's move to ISSUED commit
together — or not at all, which is why a retried or reclaimed issuance
never yields a second certificate.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from ..services import pki
from ..workflow.context import ActivityContext
from ..workflow.errors import FieldRefused
from ..workflow.registry import Registry

callables = Registry()

PEM_HEADER = "-----BEGIN CERTIFICATE REQUEST-----"


@callables.validator("csr_syntax")
def csr_syntax(value: str, ctx: ActivityContext) -> None:
    """A PEM certificate request that parses; policy comes later."""
    if PEM_HEADER not in value:
        raise FieldRefused("expected a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)",
                           code="csr.parse")
    try:
        x509.load_pem_x509_csr(value.strip().encode("ascii"))
    except (ValueError, UnicodeEncodeError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise FieldRefused(f"the certificate request does not parse: {exc}", code="csr.parse") from None


@callables.validator("certificate_profile")
def certificate_profile(value: str, ctx: ActivityContext) -> None:
    pki(ctx).ca.profiles.get(value)  # UnknownProfile names the known ones


def _expected_key(ctx: ActivityContext) -> Any:
    from ..crypto.csr import ExpectedKey

    raw = ctx.get("expected_key")
    if not raw:
        return None
    size = raw.get("size")
    return ExpectedKey(algorithm=raw.get("algorithm", ""), size=int(size) if size else None, curve=raw.get("curve"))


@callables.activity("check_certificate_request", reads_only=True)
def check_certificate_request(ctx: ActivityContext) -> None:
    """The CSR validators and the profile's policy; PolicyViolation rejects."""
    ca = pki(ctx).ca
    profile = ca.profiles.get(ctx["profile"])
    checked = ca.check_csr(ctx.conn, ctx["csr"].encode("ascii"), profile.name, expected_key=_expected_key(ctx))
    if ctx.get("owner"):
        # A person's certificate: subject data come from the directory, now —
        # whatever the starter passed in, and however old the caller's copy.
        ctx["subject"] = pki(ctx).directory.find_user(ctx["owner"]).certificate_values()
    # Render subject and SAN now, so missing directory data rejects before
    # an RA Operator spends time on it.
    subject = profile.subject_name(ctx["subject"])
    profile.subject_alt_names(ctx["subject"])
    profile.sid_extension(ctx["subject"])
    ctx["subject_dn"] = subject.rfc4514_string()
    ctx["key"] = checked.key.describe()
    ctx["public_key_sha256"] = checked.public_key_sha256
    ctx["csr_notes"] = list(checked.notes)
    ctx["approvals_required"] = profile.approvals_required
    ctx.set_attribute("profile", profile.name)
    if ctx.get("owner"):
        ctx.set_attribute("owner", ctx["owner"])


@callables.activity("issue_certificate")
def issue_certificate(ctx: ActivityContext) -> None:
    """Sign and store; TokenError (HSM offline) is retried by the definition."""
    from ..crypto.ca import IssuanceRequest

    request = IssuanceRequest(
        csr=ctx["csr"].encode("ascii"),
        profile=ctx["profile"],
        subject_attributes=ctx["subject"],
        owner=ctx.get("owner"),
        requester=ctx.creator,
        role=ctx.creator_role,
        token_id=ctx.get("token_id"),
        workflow_id=ctx.workflow_id,
        expected_key=_expected_key(ctx),
        key_origin=ctx.get("key_origin"),
        validity_days=ctx.get("validity_days"),
    )
    issued = pki(ctx).ca.issue_certificate(ctx.conn, request)
    ctx["certificate_id"] = issued.id
    ctx["certificate_serial"] = issued.serial
    ctx["certificate_pem"] = issued.pem
    # An issuance stores one certificate, once (a failed try keeps nothing): adding needs no delete first.
    ctx.add_attribute("certificate_serial", issued.serial)
