"""The card's part of the server's tasks: ``generate_key`` and ``install_certificate``.

:class:`~openxpki_py_token.enroll.TokenAgent` runs the task loop and hands
each card task here (and ``import_key`` to :mod:`.key_import`).  What may be
done to the card is decided here: a key is reused only if this workflow's
runs generated it (:class:`~openxpki_py_token.state.CreatedKeys`), a
certificate is written only next to such a key, and nothing the agent did
not write is deleted, except in a key slot the card profile gives to this PKI.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from .card import Card, CardKey, spec_text
from .card_profiles import CardProfile, KeySlot, Usage
from .errors import ForeignKeyRefused, ProtocolError, TokenError, TokenKeyNotFound
from .keyspec import KeySpec
from .piv_card import INSTALL_HINT, PivCard
from .session import answer_integer as _integer
from .session import answer_text as _text

if TYPE_CHECKING:
    from .enroll import TokenAgent

log = logging.getLogger("openxpki_py_token")

# A generic token gets a key under the server's ID; if that ID holds something
# the agent must not touch, it tries ID + 01, ID + 02 … (never deletes a key).
_ALTERNATIVE_IDS = 15


# --- generate_key -----------------------------------------------------------------------------


def generate_key(agent: TokenAgent, task: dict[str, Any],
                 profile: CardProfile) -> tuple[str | None, dict[str, Any] | None]:
    """Key, CSR, POST; the server's reason when issuance is pending, and the next task if the answer has it."""
    cert_type = _text(task, "cert_type", "generate_key")
    index, count = _integer(task, "index", "generate_key"), _integer(task, "count", "generate_key")
    spec = _key_spec(task.get("key"))
    usage = _usage(task.get("usage"))
    slot = profile.slot_for(cert_type, usage)
    if slot is not None:
        if not slot.can_sign:
            raise TokenError(
                f"the {profile.description}'s {cert_type} key (ID {slot.key_id}, "
                f"{slot.label!r}) cannot sign, so it cannot sign the CSR that proves the key "
                "is yours; ask your PKI administrator to leave this certificate type out for "
                "this card", code="token.cannot_sign")
        if slot.algorithms and spec.name not in slot.algorithms:
            raise TokenError(f"the {profile.description}'s {cert_type} slot {slot.key_id} cannot make "
                             f"{spec_text(spec)} keys (it makes {', '.join(slot.algorithms)})",
                             code="token.key_unsupported")
        key_id, label = bytes.fromhex(slot.key_id), slot.label
    else:
        key_id, label = _key_id(task.get("key_id")), str(task.get("label") or cert_type)
    required = task.get("attestation") == "required"
    if required and not _can_attest(agent):
        # Said before a key is made: the server skips the type (or fails) as its policy says.
        raise TokenError(f"the {cert_type} certificate needs a key the card attests it generated, and "
                         f"{agent.card.describe()} cannot attest keys (YubiKey PIV 4.3+ can)",
                         code="token.cannot_attest")
    what = f"{index}/{count} ({cert_type}, {spec_text(spec)})"
    key = _key_for(agent, what, spec, key_id, label, usage, profile, slot)
    if not key.can_sign:
        raise TokenError(f"key {key.key_id.hex()} on the card may not sign (CKA_SIGN is false), "
                         "so it cannot sign the CSR that proves the key is yours",
                         code="token.cannot_sign")
    csr = build_csr(agent.card, key, cert_type)
    body: dict[str, Any] = {"cert_type": cert_type, "key_id": key.key_id.hex(), "csr": csr,
                            "token_serial": agent._card_serial()}
    attestation = agent.card.attest(key.key_id) if isinstance(agent.card, PivCard) else None
    if attestation is not None:
        body["attestation"] = attestation
        agent.progress.step("the card attests that it generated the key")
    elif required:
        raise TokenError(f"{agent.card.describe()} did not attest key {key.key_id.hex()}",
                         code="token.cannot_attest")
    answer = agent.api.post("csr", body)
    status = _text(answer.body, "status", "csr")
    if status == "issued":
        agent.progress.step("CSR sent; certificate issued")
        return None, answer.next_task()
    if status == "pending":
        reason = str(answer.body.get("reason") or "waiting for approval")
        agent.progress.step(f"CSR sent; {reason}")
        return reason, answer.next_task()
    raise ProtocolError(f"the server answered the CSR with status {status!r}")


def _can_attest(agent: TokenAgent) -> bool:
    """Whether the card can prove where its keys were made (only the PIV route reads attestations)."""
    return isinstance(agent.card, PivCard) and agent.card.attestation_certificate() is not None


def _key_for(agent: TokenAgent, what: str, spec: KeySpec, key_id: bytes, label: str, usage: Usage,
             profile: CardProfile, slot: KeySlot | None) -> CardKey:
    """The key to certify: an uncertified one of ours already there, or a new one."""
    candidates = [key_id] if slot is not None else [
        key_id, *(key_id + bytes((n,)) for n in range(1, _ALTERNATIVE_IDS + 1))]
    created = agent._created_keys()
    for candidate in candidates:
        existing = agent.card.find_key(candidate)
        certs = agent.card.certificates(candidate)
        # Only a certificate for this very key makes it "certified": a card that
        # replaced its key may still hold the old key's certificate.
        certified = existing is not None and any(
            _spki(c.public_key()) == _spki(existing.public_key) for c in certs)
        # Only a key this workflow generated is reused: an uncertified key of
        # another PKI with the same label must not end up in our CSR.
        ours = existing is not None and created.owns(candidate, _spki(existing.public_key))
        if existing is not None and ours and not certified and existing.spec == spec and (
                slot is not None or existing.label == label):
            # Generated by an interrupted run and never certified: use it, do
            # not leave a second key behind.
            agent.progress.step(f"key {what} is already on the card (ID {candidate.hex()}), "
                                "not yet certified: using it")
            record_key(agent, existing)
            return existing
        if slot is None and (existing is not None or certs):
            log.info("key ID %s is taken on the card; trying the next one", candidate.hex())
            continue  # someone else's key or an older certificate: never touched
        if slot is not None and existing is not None:
            # The card profile gives this slot to this PKI: replacing is the
            # one deletion of something the agent did not write.
            held = f" and its certificate {certs[0].subject.rfc4514_string()}" if certs else ""
            agent.progress.step(f"note: this replaces the key in slot {candidate.hex()}{held}")
            # Cards that overwrite on keygen may refuse to delete: that is fine.
            agent.card.delete_key(candidate, login=profile.keygen_login)
        return _new_key(agent, what, spec, candidate, label, usage, profile)
    raise TokenError(f"key IDs {key_id.hex()} to {candidates[-1].hex()} are all taken on "
                     f"{agent.card.describe()}; remove old keys first", code="token.full")


def _new_key(agent: TokenAgent, what: str, spec: KeySpec, key_id: bytes, label: str, usage: Usage,
             profile: CardProfile) -> CardKey:
    agent.progress.step(f"generating key {what} on the card…")
    # Claimed before the card has it: a run killed right after key
    # generation must still know the key as its own.
    created = agent._created_keys()
    created.claim(key_id)
    agent.store.save_created_keys(created)
    agent.card.generate_key(spec, key_id, label, usage, login=profile.keygen_login)
    if profile.reinit_after_keygen:
        agent.card.reinitialize()
    key = agent.card.find_key(key_id)
    if key is None:
        raise TokenKeyNotFound(f"{agent.card.describe()} generated key {key_id.hex()} but does not "
                               "show it afterwards")
    if key.spec != spec:
        raise TokenError(f"{agent.card.describe()} generated a {key.spec} key instead of "
                         f"{spec_text(spec)}", code="token.keygen")
    record_key(agent, key)
    return key


def record_key(agent: TokenAgent, key: CardKey) -> None:
    created = agent._created_keys()
    if created.record(key.key_id, _spki(key.public_key)):
        agent.store.save_created_keys(created)


# --- install_certificate ------------------------------------------------------------------


def install_certificate(agent: TokenAgent, task: dict[str, Any], profile: CardProfile) -> dict[str, Any] | None:
    """Write the certificate next to its key, POST the receipt; the next task if the answer has it."""
    cert_type = _text(task, "cert_type", "install_certificate")
    index = _integer(task, "index", "install_certificate")
    count = _integer(task, "count", "install_certificate")
    key_id = _key_id(task.get("key_id"))
    serial = _text(task, "serial", "install_certificate")
    try:
        cert = x509.load_pem_x509_certificate(_text(task, "certificate", "install_certificate").encode())
    except ValueError:
        raise ProtocolError("the server sent a certificate that is not PEM X.509") from None
    if _serial_int(serial) != cert.serial_number:
        raise ProtocolError(f"the server's serial {serial} is not the certificate's "
                            f"({cert.serial_number:x})")
    created = agent._created_keys()
    refused = (f"the server asked to write its {cert_type} certificate for key ID {key_id.hex()}, "
               "which this personalization did not generate on the card; refused, nothing on "
               "the card was changed. Tell your PKI administrator")
    if not created.has(key_id):
        raise ForeignKeyRefused(refused)
    key = agent.card.find_key(key_id)
    if key is None:
        raise TokenKeyNotFound(
            f"the key for the {cert_type} certificate (ID {key_id.hex()}) is not on "
            f"{agent.card.describe()}; insert the card you started with", code="token.wrong_card")
    if not created.owns(key_id, _spki(key.public_key)):
        raise ForeignKeyRefused(refused)  # the ID is ours, the key under it is not any more
    if _spki(cert.public_key()) != _spki(key.public_key):
        raise ProtocolError(f"the server's {cert_type} certificate is not for key {key_id.hex()} on "
                            "the card; it was not written. Tell your PKI administrator")
    if any(existing == cert for existing in agent.card.certificates(key_id)):
        agent.progress.step(f"certificate {index}/{count} is already on the card")
    else:
        agent.progress.step(f"writing certificate {index}/{count} to the card…")
        label = str(task.get("label") or key.label or cert_type)
        # Older certificates under the ID are replaced only in a slot the
        # profile gives to this PKI; on a generic token they stay.
        in_slot = any(bytes.fromhex(s.key_id) == key_id for s in profile.slots)
        agent.card.write_certificate(cert, key_id, label, login=profile.cert_write_login,
                                     replace=in_slot)
    return agent.api.post("receipt", {"cert_type": cert_type, "key_id": key_id.hex(), "serial": serial,
                                      "token_serial": agent._card_serial()}).next_task()


def check_route(profile: CardProfile, card: Card | PivCard) -> None:
    if profile.route == card.route:
        return
    if profile.route == "piv":
        raise TokenError(f"{card.describe()} is a PIV card, which OpenSC's PKCS#11 module cannot "
                         f"personalize; {INSTALL_HINT} and run with --card-profile auto or piv",
                         code="token.route")
    raise TokenError(f"--card-profile {profile.name} works through a PKCS#11 module, but "
                     f"{card.describe()} was opened as a PIV card; use --card-profile auto or piv",
                     code="token.route")


def build_csr(card: Card | PivCard, key: CardKey, cert_type: str) -> str:
    """A PKCS#10 request signed on the card (PEM); the server ignores its subject."""
    private = card.private_key(key)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cert_type)]))
    csr = builder.sign(private, hashes.SHA256())
    # A driver that returns garbage (OpenSC before re-initialising) is caught
    # here, with a clear message, instead of as csr.signature from the server.
    if not csr.is_signature_valid:
        raise TokenError(f"{card.describe()} produced an invalid signature with key {key.key_id.hex()}",
                         code="token.bad_signature")
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --- reading the server's tasks ----------------------------------------------------------------


def _key_id(value: object) -> bytes:
    try:
        if isinstance(value, str) and 0 < len(value) <= 64:
            return bytes.fromhex(value)
    except ValueError:
        pass
    raise ProtocolError(f"the server's key_id {value!r} is not a hex CKA_ID")


def _usage(value: object) -> Usage:
    if value == "sign":
        return "sign"
    if value == "decrypt":
        return "decrypt"
    raise ProtocolError(f"the server asked for key usage {value!r}; this agent knows sign and decrypt")


def _key_spec(value: object) -> KeySpec:
    if isinstance(value, dict):
        try:
            if value.get("algorithm") == "rsa":
                return KeySpec("rsa", rsa_bits=value.get("size"))
            if value.get("algorithm") == "ec":
                return KeySpec("ec", curve=value.get("curve"))
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"the server asked for a key this agent cannot make: {exc}") from None
    raise ProtocolError(f"the server asked for key {value!r}; expected "
                        '{"algorithm": "rsa", "size": …} or {"algorithm": "ec", "curve": …}')


def _serial_int(serial: str) -> int:
    try:
        return int(serial.replace(":", ""), 16)
    except ValueError:
        raise ProtocolError(f"the server's certificate serial {serial!r} is not hex") from None


def _spki(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))
