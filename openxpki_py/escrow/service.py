"""Escrowed keys: made on the server, sealed in the HSM's custody, delivered to one card, recovered for the owner.

Where a private key exists in clear: in this process's memory while it is
generated (then sealed by the HSM and wiped), while it is delivered (opened
by the HSM, sealed for the agent, wiped), while a recovery builds the
PKCS#12, and on the card.  Never in the database, the workflow context or a
log line.  Python cannot promise that no copy of a buffer survives; the
code wipes every buffer it owns (``wipe``/``scrub``) and OpenSSL clears its
key structures when they are freed.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from openxpki_py_token.key_transport import (
    PROOF_RSA_OAEP,
    SealedKey,
    b64,
    new_challenge,
    proof_matches,
    scrub,
    seal_private_key,
    wipe,
)
from openxpki_py_token.keyspec import KeySpec
from sqlalchemy import select, update
from sqlalchemy.engine import Connection, RowMapping

from ..audit import append_audit
from ..db.certstore import certificate_for_key, utcnow
from ..db.schema import key_escrow
from ..errors import NotFound, PolicyViolation
from .custody import WRAP_ALGORITHM, EscrowCustodian

_AAD_LABEL = "openxpki-py escrow v1"
#: Characters of a one-time PKCS#12 password: lower case and digits without look-alikes (0/o, 1/l/i),
#: read out or typed without doubt; five groups of five, joined by "-": 25 × log2(31) ≈ 124 bits.
_OTP_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_OTP_GROUPS, _OTP_GROUP_LENGTH = 5, 5


class KeyProofRefused(PolicyViolation):
    """The receipt does not prove that the card holds the escrowed key."""

    code = "escrow.proof"


@dataclass(frozen=True)
class EscrowedKey:
    """What the personalization learns about a new escrowed key: no key material."""

    id: int
    public_key_sha256: str
    csr_pem: str  # signed by the escrowed key in memory, before it was sealed: the usual issuance path


def _aad(owner: str, fingerprint: str) -> bytes:
    return f"{_AAD_LABEL};owner={owner};spki_sha256={fingerprint}".encode()


EscrowedPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key_pair(spec: KeySpec) -> EscrowedPrivateKey:
    """RSA of the spec's size, or EC on its curve (P-256, P-384): the kinds a card imports and proves."""
    if spec.algorithm == "rsa" and spec.rsa_bits is not None:
        return rsa.generate_private_key(public_exponent=65537, key_size=spec.rsa_bits)
    if spec.algorithm == "ec":
        return ec.generate_private_key(spec.ec_curve())
    raise PolicyViolation(f"escrowed keys are RSA or EC P-256/P-384, not {spec}", code="escrow.key_type")


def _pkcs8(key: EscrowedPrivateKey) -> bytearray:
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    buffer = bytearray(der)
    scrub(der)
    return buffer


class KeyEscrow:
    """The escrow's operations; each takes the caller's connection so it commits with the caller's step."""

    def __init__(self, custodian: EscrowCustodian, *, history_keys: int = 0) -> None:
        self.custodian = custodian
        self.history_keys = history_keys

    def close(self) -> None:
        self.custodian.close()

    # --- generation -----------------------------------------------------------------

    def generate(self, conn: Connection, *, owner: str, cert_type: str, profile: str, spec: KeySpec,
                 workflow_id: int | None, actor: str, role: str) -> EscrowedKey:
        """A new key pair, sealed in the HSM's custody and recorded; the CSR is for the issuance workflow."""
        private = new_key_pair(spec)
        public_der = private.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        fingerprint = hashlib.sha256(public_der).hexdigest()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cert_type)]))
               .sign(private, hashes.SHA256()))
        plain = _pkcs8(private)
        try:
            nonce, blob = self.custodian.seal(plain, _aad(owner, fingerprint))
        finally:
            wipe(plain)
            del private
        now = utcnow()
        inserted = conn.execute(key_escrow.insert().values(
            owner=owner, cert_type=cert_type, profile=profile, key_spec=spec.name,
            public_key_sha256=fingerprint, public_key_der=public_der, wrap_algorithm=WRAP_ALGORITHM,
            wrap_key_label=self.custodian.config.key_label, wrap_nonce=nonce, wrapped_key=blob,
            status="escrowed", workflow_id=workflow_id, deliveries=0, created_at=now,
        )).inserted_primary_key
        assert inserted is not None
        escrow_id = int(inserted[0])
        append_audit(conn, actor=actor, role=role, event="escrow.generate", target=fingerprint,
                     details={"escrow_id": escrow_id, "owner": owner, "cert_type": cert_type,
                              "key": spec.name, "workflow_id": workflow_id,
                              "custody": self.custodian.describe()})
        return EscrowedKey(int(escrow_id), fingerprint, csr.public_bytes(serialization.Encoding.PEM).decode())

    # --- records --------------------------------------------------------------------

    @staticmethod
    def record(conn: Connection, escrow_id: int) -> RowMapping:
        row = conn.execute(select(key_escrow).where(key_escrow.c.id == escrow_id)).mappings().first()
        if row is None:
            raise NotFound(f"no escrowed key {escrow_id}", code="escrow.not_found")
        return row

    @staticmethod
    def history(conn: Connection, owner: str) -> list[dict[str, Any]]:
        """A person's escrowed keys, newest first; no key material."""
        rows = conn.execute(select(key_escrow).where(key_escrow.c.owner == owner)
                            .order_by(key_escrow.c.id.desc())).mappings()
        return [describe(r) for r in rows]

    def _private_key(self, row: RowMapping) -> bytearray:
        return self.custodian.open(bytes(row["wrap_nonce"]), bytes(row["wrapped_key"]),
                                   _aad(row["owner"], row["public_key_sha256"]))

    # --- delivery to the card -------------------------------------------------------------

    def deliver(self, conn: Connection, escrow_id: int, *, agent_key: str, context: bytes, actor: str,
                workflow_id: int, with_history: bool = True, rsa_proof: str = PROOF_RSA_OAEP) -> dict[str, Any]:
        """The key sealed for this agent and task, and a challenge only the key's holder can answer.

        ``proof`` names the challenge: RSA-OAEP ciphertext to decrypt, or an
        ephemeral EC key for ECDH (:func:`~openxpki_py_token.key_transport.new_challenge`).
        Without ``with_history`` (the card has one slot for the type, e.g.
        OpenPGP) the owner's earlier keys are not sent at all.
        """
        row = self.record(conn, escrow_id)
        if row["workflow_id"] != workflow_id or row["status"] not in ("escrowed", "installed"):
            raise PolicyViolation("this escrowed key is not for this personalization's current step",
                                  code="escrow.not_yours")
        sealed = self._seal_for_agent(row, agent_key, context)
        public = serialization.load_der_public_key(bytes(row["public_key_der"]))
        assert isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey))
        expected, challenge, proof = new_challenge(public, context, rsa_proof)
        history = self._history(conn, row, agent_key, workflow_id) if with_history else []
        conn.execute(update(key_escrow).where(key_escrow.c.id == escrow_id)
                     .values(challenge_sha256=expected, deliveries=key_escrow.c.deliveries + 1))
        append_audit(conn, actor=actor, role="User", event="escrow.deliver", target=row["public_key_sha256"],
                     details={"escrow_id": escrow_id, "workflow_id": workflow_id,
                              "delivery": int(row["deliveries"]) + 1,
                              "history": [h["escrow_id"] for h in history]})
        return {**sealed.as_api(), "challenge": b64(challenge), "proof": proof, "history": history}

    def _seal_for_agent(self, row: RowMapping, agent_key: str, context: bytes) -> SealedKey:
        plain = self._private_key(row)
        try:
            return seal_private_key(agent_key, plain, context)
        finally:
            wipe(plain)

    def _history(self, conn: Connection, current: RowMapping, agent_key: str, workflow_id: int) -> list[dict[str, Any]]:
        """The owner's previous escrowed keys of this type (newest first), each sealed for the agent.

        Each is bound to its own certificate's serial: ``transport_context(workflow, type, serial)``.
        """
        from openxpki_py_token.key_transport import transport_context

        if self.history_keys <= 0:
            return []
        rows = conn.execute(select(key_escrow).where(
            key_escrow.c.owner == current["owner"], key_escrow.c.cert_type == current["cert_type"],
            key_escrow.c.id < current["id"], key_escrow.c.certificate_serial.is_not(None),
        ).order_by(key_escrow.c.id.desc()).limit(self.history_keys)).mappings().all()
        history = []
        for row in rows:
            cert_row = certificate_for_key(conn, row["public_key_sha256"])
            if cert_row is None:
                continue
            serial = str(row["certificate_serial"])
            sealed = self._seal_for_agent(row, agent_key, transport_context(workflow_id, row["cert_type"], serial))
            pem = x509.load_der_x509_certificate(bytes(cert_row["der"])).public_bytes(serialization.Encoding.PEM)
            history.append({"escrow_id": int(row["id"]), "serial": serial, "certificate": pem.decode(),
                            **sealed.as_api()})
        return history

    def check_proof(self, conn: Connection, escrow_id: int, proof: bytes, *, token_id: int, serial: str,
                    actor: str, now: datetime) -> None:
        """The card answered the last challenge (decryption or ECDH): the key is on it.  Records the installation."""
        row = self.record(conn, escrow_id)
        expected = row["challenge_sha256"]
        if expected is None or not proof_matches(bytes(expected), proof):
            raise KeyProofRefused("the card did not answer the server's challenge with the escrowed key; "
                                  "run the agent again (it fetches the key and a new challenge)")
        conn.execute(update(key_escrow).where(key_escrow.c.id == escrow_id).values(
            status="installed", token_id=token_id, certificate_serial=serial, installed_at=now,
            challenge_sha256=None))
        append_audit(conn, actor=actor, role="User", event="escrow.install", target=row["public_key_sha256"],
                     details={"escrow_id": escrow_id, "token_id": token_id, "serial": serial})

    # --- recovery ---------------------------------------------------------------------

    def pkcs12_for_owner(self, conn: Connection, escrow_id: int, certificate: x509.Certificate | None, *,
                         actor: str, role: str, recovery_workflow: int) -> tuple[bytes, str]:
        """(PKCS#12, one-time password): the key and its certificate, for the owner who collects it.

        AES-256-CBC with PBKDF2-HMAC-SHA256 for key and certificate, an
        HMAC-SHA256 MAC: what OpenSSL 3 writes by default and opens.
        """
        row = self.record(conn, escrow_id)
        plain = self._private_key(row)
        der = bytes(plain)
        try:
            key = serialization.load_der_private_key(der, password=None)
        finally:
            wipe(plain)
            scrub(der)
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey))
        password = one_time_password()
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                      .kdf_rounds(100_000)
                      .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                      .hmac_hash(hashes.SHA256())
                      .build(password.encode()))
        name = f"{row['owner']} {row['cert_type']}".encode()
        data = pkcs12.serialize_key_and_certificates(name, key, certificate, None, encryption)
        del key
        conn.execute(update(key_escrow).where(key_escrow.c.id == escrow_id)
                     .values(recovered_at=utcnow()))
        append_audit(conn, actor=actor, role=role, event="escrow.collect", target=row["public_key_sha256"],
                     details={"escrow_id": escrow_id, "owner": row["owner"], "form": "pkcs12",
                              "recovery_workflow": recovery_workflow})
        return data, password


def one_time_password() -> str:
    """A fresh password for one PKCS#12, in readable groups (the dashes are part of it)."""
    return "-".join("".join(secrets.choice(_OTP_ALPHABET) for _ in range(_OTP_GROUP_LENGTH))
                    for _ in range(_OTP_GROUPS))


def describe(row: RowMapping) -> dict[str, Any]:
    """An escrow record for people: never the blob."""
    return {name: row[name] for name in (
        "id", "owner", "cert_type", "profile", "key_spec", "public_key_sha256", "status", "workflow_id",
        "certificate_serial", "token_id", "deliveries", "created_at", "installed_at", "recovered_at")}
