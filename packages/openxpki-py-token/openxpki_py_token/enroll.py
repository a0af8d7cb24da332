"""The agent's part of personalization: report the card, then do the server's tasks.

The server decides what is left to do (``GET /api/v1/task``); the agent only
executes one task at a time and never keeps its own plan.  That is what makes
a rerun after any interruption safe: a key that was generated but never
certified is found on the card and used again, a certificate already on the
card only needs its receipt, and the server never issues twice.

The server is trusted with the plan, not with the card: a task may only
make the agent reuse, or write a certificate for, a key this workflow's runs
generated (:class:`~openxpki_py_token.state.CreatedKeys`), and nothing the
agent did not write is deleted, except in a key slot that the card profile
gives to this PKI.  Waiting is bounded by ``--timeout`` on a monotonic
clock, never by a count of the server's answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from .api_client import ApiClient
from .card import Card, CardInfo, CardKey, spec_text
from .card_profiles import CardProfile, KeySlot, Usage, choose_profile
from .credentials import DerivedCredentials, ask_server
from .errors import (
    WHOLE_CARD_CODES,
    EnrollmentFailed,
    EnrollmentStopped,
    ForeignKeyRefused,
    ProtocolError,
    ServerRefused,
    ServerUnreachable,
    TokenError,
    TokenKeyNotFound,
)
from .keyspec import KeySpec
from .pairing import NONCE_BYTES, decode_b64, new_agent_key, pairing_phrase, public_key_text
from .piv_card import INSTALL_HINT, PivCard
from .progress import Progress
from .session import answer_integer as _integer
from .session import answer_text as _text
from .session import open_session
from .state import CreatedKeys, EnrollmentSession, StateStore

log = logging.getLogger("openxpki_py_token")

# The server's retry_after is honoured within these bounds (seconds).
_MIN_WAIT, _MAX_WAIT = 0.2, 60.0
# A generic token gets a key under the server's ID; if that ID holds something
# the agent must not touch, it tries ID + 01, ID + 02 … (never deletes a key).
_ALTERNATIVE_IDS = 15
_AUTH_CODES = frozenset({"auth.token_invalid", "auth.token_expired", "auth.token_missing"})


@dataclass(frozen=True)
class IssuedCertificate:
    """One entry of the ``done`` task."""

    cert_type: str
    serial: str
    subject: str = ""
    not_after: str = ""
    #: ``installed``, or ``kept`` for a still valid certificate from before.
    status: str = ""


# Card errors that mean "this card cannot do this step" (not "something broke"):
# reported to the server, which skips the certificate type or fails, per policy.
CARD_UNABLE_CODES = (frozenset({"token.cannot_sign", "token.key_unsupported", "token.cannot_attest"})
                     | WHOLE_CARD_CODES)


class TokenAgent:
    """Runs one enrollment: ``TokenAgent(...).enroll(code)``."""

    def __init__(self, api: ApiClient, card: Card | PivCard, store: StateStore, *,
                 profile_name: str = "auto", timeout: float = 900.0,
                 progress: Progress | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.card = card
        self.store = store
        self.profile_name = profile_name
        self.timeout = timeout
        self.progress = progress or Progress()
        self._sleep = sleep
        self._clock = clock
        self._created: CreatedKeys | None = None

    def enroll(self, code: str) -> list[IssuedCertificate]:
        code = code.strip()
        # Codes are case-insensitive and their dashes optional: a rerun typed
        # differently must still find the saved session.
        state_key = "".join(ch for ch in code.upper() if ch.isalnum())
        with self.card:
            info = self.card.info
            assert info is not None
            self.progress.step(f"card found: {info.describe()}")
            profile = choose_profile(self.profile_name, (info.label, info.model, info.manufacturer))
            log.info("card profile %s", profile.name)
            _check_route(profile, self.card)
            # Check the PINs before the one-time code is spent: a typo must not
            # cost the user a new code.  Admin credentials from the server are
            # released only for a confirmed card: they are checked at first use.
            self.card.login("user")
            if profile.needs_so_pin and not self.card.credentials.from_server(profile.route):
                self.card.login("so")
            session = self._authenticate(code, state_key)
            self.card.credentials.server = self._derived_credentials
            self._created = self.store.load_created_keys(session.server, session.workflow_id, info.serial)
            try:
                announced = self._report_card(info, profile)
                issued = self._run_tasks(profile, announced)
                self._finish_card()
            except ServerRefused as exc:
                # The saved session is of no use any more: a rerun needs a new code.
                # The key record outlives it (a new code continues the workflow)
                # unless the workflow itself is over.
                if exc.code in _AUTH_CODES or isinstance(exc, EnrollmentFailed):
                    self.store.forget(session.server, state_key)
                if isinstance(exc, EnrollmentFailed):
                    self.store.forget_created_keys(session.server, session.workflow_id)
                raise
        self.store.forget(session.server, state_key)
        self.store.forget_created_keys(session.server, session.workflow_id)
        return issued

    def _derived_credentials(self) -> DerivedCredentials | None:
        return ask_server(self.api, self._card_serial())

    def _finish_card(self) -> None:
        """What a card needs once all its certificates are on it (PIV: CHUID, management key)."""
        if self.card.admin_replaced:
            self.progress.step("the card's factory admin credentials were replaced by per-card ones that only "
                               "your PKI can derive")
        escrow = self.card.finish()
        if isinstance(self.card, PivCard):
            self.progress.step("new CHUID and CCC written (the card's PC/SC identity changed)")
        if escrow is not None:
            self.progress.step(f"new PIV management key set and saved to {escrow}: hand this file to "
                               "your PKI administrator for escrow, then delete it (without the key the "
                               "card cannot be personalized again)")

    # --- the session ------------------------------------------------------------------------

    def _authenticate(self, code: str, state_key: str) -> EnrollmentSession:
        return open_session(self.api, self.store, self.progress, code, state_key)

    def _card_serial(self) -> str:
        """The card this run works on, named with every CSR and receipt (the server refuses a swap)."""
        assert self.card.info is not None, "the card is opened before any task"
        return self.card.info.serial

    def _report_card(self, info: CardInfo, profile: CardProfile) -> bool:
        """POST /token; True when the user still has to confirm the card."""
        body: dict[str, Any] = {
            "serial": info.serial, "manufacturer": info.manufacturer, "model": info.model,
            "label": info.label, "card_profile": profile.name,
        }
        if profile.slots:
            # The server plans the certificate types by these (which slot can
            # sign a CSR, which keys it makes) before the user's time is spent.
            body["key_slots"] = [slot.as_api() for slot in profile.capabilities()]
        status = _text(self.api.post("token", body).body, "status", "token")
        if status == "awaiting_confirmation":
            self.progress.step("waiting for you to confirm the card and the phrase in the browser…")
            return True
        if status != "confirmed":
            raise ProtocolError(f"the server answered the card report with status {status!r}")
        return False

    # --- the task loop ----------------------------------------------------------------------

    def _run_tasks(self, profile: CardProfile, announced_confirmation: bool) -> list[IssuedCertificate]:
        deadline = self._clock() + self.timeout
        # The first wait after "confirm the card in the browser" says the same again.
        shown: str | None = None
        quiet = announced_confirmation
        while True:
            if self._clock() >= deadline:
                # Also ends a server that hands out work forever.
                raise self._stopped(shown or "the server had more tasks")
            task = self.api.get("task").body
            kind = _text(task, "task", "task")
            if kind == "wait":
                reason = str(task.get("reason") or "the server is busy")
                if not quiet and reason != shown:
                    self.progress.step(f"waiting: {reason}…")
                quiet, shown = False, reason
                self._wait(task, deadline, reason)
                continue
            quiet, shown = False, None
            if kind == "generate_key":
                # "CSR sent; waiting for approval" already said what the next waits are for.
                try:
                    shown = self._generate_key(task, profile)
                except TokenError as exc:
                    if exc.code not in CARD_UNABLE_CODES:
                        raise
                    self._report_unable(task, exc)
                    if exc.code in WHOLE_CARD_CODES:
                        raise  # the server has ended the personalization; the user reads why here too
            elif kind == "install_certificate":
                self._install_certificate(task, profile)
            elif kind == "import_key":
                from .key_import import import_escrowed_key

                import_escrowed_key(self, task, profile)
            elif kind == "done":
                return self._done(task)
            elif kind == "failed":
                raise EnrollmentFailed(str(task.get("message") or "the personalization failed"),
                                       code=str(task.get("code") or "task.failed"))
            else:
                raise ProtocolError(f"the server asked for task {kind!r}, which this agent does not "
                                    "know: update openxpki-py-token")

    def _report_unable(self, task: dict[str, Any], exc: TokenError) -> None:
        """Tell the server this card cannot do the step, so it skips the type (or fails) instead of waiting.

        A server that predates ``/api/v1/unable`` gets the old behaviour: the agent stops with the card's error.
        """
        cert_type = _text(task, "cert_type", "generate_key")
        try:
            self.api.post("unable", {"cert_type": cert_type, "code": exc.code, "reason": exc.message,
                                     "token_serial": self._card_serial()})
        except (ServerRefused, ProtocolError) as refused:
            if getattr(refused, "status", 0) == 404 or isinstance(refused, ProtocolError):
                raise exc from None
            raise
        if exc.code not in WHOLE_CARD_CODES:
            self.progress.step(f"{cert_type}: this card cannot do it ({exc.code}); the server leaves it out")

    def _wait(self, task: dict[str, Any], deadline: float, reason: str) -> None:
        """Sleep as the server asks, but never past the deadline (then one last poll)."""
        retry_after = task.get("retry_after", 1)
        if not isinstance(retry_after, (int, float)) or isinstance(retry_after, bool):
            retry_after = 1
        delay = min(max(float(retry_after), _MIN_WAIT), _MAX_WAIT)
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise self._stopped(reason)
        self._sleep(min(delay, remaining))

    def _stopped(self, reason: str) -> EnrollmentStopped:
        return EnrollmentStopped(
            f"stopped waiting after {self.timeout:.0f} s ({reason}); run the same command "
            "again to continue (if the code's session has expired, reload the web page for "
            "a new code)")

    def _done(self, task: dict[str, Any]) -> list[IssuedCertificate]:
        listed = task.get("certificates")
        if not isinstance(listed, list):
            raise ProtocolError("the server's done task has no certificate list")
        issued = [IssuedCertificate(**{name: str(c.get(name) or "") for name in
                                       ("cert_type", "serial", "subject", "not_after", "status")})
                  for c in listed if isinstance(c, dict)]
        for left_out in task.get("skipped") or []:
            if isinstance(left_out, dict):
                self.progress.step(f"not on this card: {left_out.get('cert_type')} "
                                   f"({left_out.get('reason') or 'the server left it out'})")
        self.progress.step(f"done: {len(issued)} certificate{'s' if len(issued) != 1 else ''} on the card")
        return issued

    # --- generate_key -----------------------------------------------------------------------

    def _generate_key(self, task: dict[str, Any], profile: CardProfile) -> str | None:
        """Key, CSR, POST; returns the server's reason when issuance is pending."""
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
        if required and not self._can_attest():
            # Said before a key is made: the server skips the type (or fails) as its policy says.
            raise TokenError(f"the {cert_type} certificate needs a key the card attests it generated, and "
                             f"{self.card.describe()} cannot attest keys (YubiKey PIV 4.3+ can)",
                             code="token.cannot_attest")
        what = f"{index}/{count} ({cert_type}, {spec_text(spec)})"
        key = self._key_for(what, spec, key_id, label, usage, profile, slot)
        if not key.can_sign:
            raise TokenError(f"key {key.key_id.hex()} on the card may not sign (CKA_SIGN is false), "
                             "so it cannot sign the CSR that proves the key is yours",
                             code="token.cannot_sign")
        csr = build_csr(self.card, key, cert_type)
        body: dict[str, Any] = {"cert_type": cert_type, "key_id": key.key_id.hex(), "csr": csr,
                                "token_serial": self._card_serial()}
        attestation = self.card.attest(key.key_id) if isinstance(self.card, PivCard) else None
        if attestation is not None:
            body["attestation"] = attestation
            self.progress.step("the card attests that it generated the key")
        elif required:
            raise TokenError(f"{self.card.describe()} did not attest key {key.key_id.hex()}",
                             code="token.cannot_attest")
        answer = self.api.post("csr", body)
        status = _text(answer.body, "status", "csr")
        if status == "issued":
            self.progress.step("CSR sent; certificate issued")
            return None
        if status == "pending":
            reason = str(answer.body.get("reason") or "waiting for approval")
            self.progress.step(f"CSR sent; {reason}")
            return reason
        raise ProtocolError(f"the server answered the CSR with status {status!r}")

    def _can_attest(self) -> bool:
        """Whether the card can prove where its keys were made (only the PIV route reads attestations)."""
        return isinstance(self.card, PivCard) and self.card.attestation_certificate() is not None

    def _key_for(self, what: str, spec: KeySpec, key_id: bytes, label: str, usage: Usage,
                 profile: CardProfile, slot: KeySlot | None) -> CardKey:
        """The key to certify: an uncertified one of ours already there, or a new one."""
        candidates = [key_id] if slot is not None else [
            key_id, *(key_id + bytes((n,)) for n in range(1, _ALTERNATIVE_IDS + 1))]
        created = self._created_keys()
        for candidate in candidates:
            existing = self.card.find_key(candidate)
            certs = self.card.certificates(candidate)
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
                self.progress.step(f"key {what} is already on the card (ID {candidate.hex()}), "
                                   "not yet certified: using it")
                self._record_key(existing)
                return existing
            if slot is None and (existing is not None or certs):
                log.info("key ID %s is taken on the card; trying the next one", candidate.hex())
                continue  # someone else's key or an older certificate: never touched
            if slot is not None and existing is not None:
                # The card profile gives this slot to this PKI: replacing is the
                # one deletion of something the agent did not write.
                held = f" and its certificate {certs[0].subject.rfc4514_string()}" if certs else ""
                self.progress.step(f"note: this replaces the key in slot {candidate.hex()}{held}")
                # Cards that overwrite on keygen may refuse to delete: that is fine.
                self.card.delete_key(candidate, login=profile.keygen_login)
            return self._new_key(what, spec, candidate, label, usage, profile)
        raise TokenError(f"key IDs {key_id.hex()} to {candidates[-1].hex()} are all taken on "
                         f"{self.card.describe()}; remove old keys first", code="token.full")

    def _new_key(self, what: str, spec: KeySpec, key_id: bytes, label: str, usage: Usage,
                 profile: CardProfile) -> CardKey:
        self.progress.step(f"generating key {what} on the card…")
        # Claimed before the card has it: a run killed right after key
        # generation must still know the key as its own.
        created = self._created_keys()
        created.claim(key_id)
        self.store.save_created_keys(created)
        self.card.generate_key(spec, key_id, label, usage, login=profile.keygen_login)
        if profile.reinit_after_keygen:
            self.card.reinitialize()
        key = self.card.find_key(key_id)
        if key is None:
            raise TokenKeyNotFound(f"{self.card.describe()} generated key {key_id.hex()} but does not "
                                   "show it afterwards")
        if key.spec != spec:
            raise TokenError(f"{self.card.describe()} generated a {key.spec} key instead of "
                             f"{spec_text(spec)}", code="token.keygen")
        self._record_key(key)
        return key

    def _created_keys(self) -> CreatedKeys:
        assert self._created is not None, "loaded after the enrollment code is traded"
        return self._created

    def _record_key(self, key: CardKey) -> None:
        created = self._created_keys()
        if created.record(key.key_id, _spki(key.public_key)):
            self.store.save_created_keys(created)

    # --- install_certificate ------------------------------------------------------------------

    def _install_certificate(self, task: dict[str, Any], profile: CardProfile) -> None:
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
        created = self._created_keys()
        refused = (f"the server asked to write its {cert_type} certificate for key ID {key_id.hex()}, "
                   "which this personalization did not generate on the card; refused, nothing on "
                   "the card was changed. Tell your PKI administrator")
        if not created.has(key_id):
            raise ForeignKeyRefused(refused)
        key = self.card.find_key(key_id)
        if key is None:
            raise TokenKeyNotFound(
                f"the key for the {cert_type} certificate (ID {key_id.hex()}) is not on "
                f"{self.card.describe()}; insert the card you started with", code="token.wrong_card")
        if not created.owns(key_id, _spki(key.public_key)):
            raise ForeignKeyRefused(refused)  # the ID is ours, the key under it is not any more
        if _spki(cert.public_key()) != _spki(key.public_key):
            raise ProtocolError(f"the server's {cert_type} certificate is not for key {key_id.hex()} on "
                                "the card; it was not written. Tell your PKI administrator")
        if any(existing == cert for existing in self.card.certificates(key_id)):
            self.progress.step(f"certificate {index}/{count} is already on the card")
        else:
            self.progress.step(f"writing certificate {index}/{count} to the card…")
            label = str(task.get("label") or key.label or cert_type)
            # Older certificates under the ID are replaced only in a slot the
            # profile gives to this PKI; on a generic token they stay.
            in_slot = any(bytes.fromhex(s.key_id) == key_id for s in profile.slots)
            self.card.write_certificate(cert, key_id, label, login=profile.cert_write_login,
                                        replace=in_slot)
        self.api.post("receipt", {"cert_type": cert_type, "key_id": key_id.hex(), "serial": serial,
                                  "token_serial": self._card_serial()})


def _check_route(profile: CardProfile, card: Card | PivCard) -> None:
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
