"""The ``import_key`` task: put an escrowed key the server made onto the card, then prove the card holds it.

The agent asks for the key with a fresh X25519 key of its own
(:mod:`.key_transport`), opens it, checks that it is the certificate's key,
imports it (PKCS#11: ``C_CreateObject`` with CKA_SENSITIVE true and
CKA_EXTRACTABLE false; PIV: the management key's PUT KEY), wipes its
buffers, writes the certificate, answers the server's challenge on the card
(RSA: decrypts it; EC: derives the ECDH secret with the server's ephemeral
key, :func:`.key_transport.ecdh_proof`) and sends the answer with the
receipt.  RSA keys (2048-4096) and EC P-256/P-384 keys are imported; a card
that refuses an EC key is named with the fix (an RSA key for that card
type).  A rerun whose card already holds the key skips the import and only
proves it.

OpenPGP cards (v2 and later) take an RSA key into their decryption slot
(02) with the card's own key import over PC/SC (:mod:`.openpgp_import`;
OpenSC's ``C_CreateObject`` for them crashes the agent), and prove it by
decrypting a PKCS#1 v1.5 challenge (``rsa_proof``: OpenSC's OpenPGP driver
has no OAEP).  Such a card has one decryption key, so it keeps no key
history: the server sends none for it (the card plan's ``key_history``),
and the agent says so if an older server does.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from .card import Card
from .card_profiles import CardProfile
from .errors import ForeignKeyRefused, ProtocolError, TokenError, UsageError
from .keyspec import KeySpec
from .key_transport import (
    CHALLENGE_PADDING,
    PROOF_ECDH,
    PROOF_RSA_OAEP,
    RSA_PROOFS,
    EscrowedPublicKey,
    b64,
    challenge_peer,
    ecdh_proof,
    new_transport_key,
    open_private_key,
    public_text,
    scrub,
    transport_context,
    unb64,
    wipe,
)
from .piv_card import PivCard
from .piv_objects import piv_slot
from .pkcs11.public_keys import EC_PARAMS

if TYPE_CHECKING:
    from .enroll import TokenAgent

log = logging.getLogger("openxpki_py_token")

# A generic token: the server's ID, or the next free one (never overwrites someone else's key).
_ALTERNATIVE_IDS = 15


def import_escrowed_key(agent: TokenAgent, task: dict[str, Any], profile: CardProfile) -> dict[str, Any] | None:
    """Import the escrowed key and its certificate, prove it, POST the receipt; the next task if it has one."""
    from .card_tasks import _key_id, _serial_int, _spki, _usage
    from .session import answer_integer as _integer
    from .session import answer_text as _text

    cert_type = _text(task, "cert_type", "import_key")
    index, count = _integer(task, "index", "import_key"), _integer(task, "count", "import_key")
    serial = _text(task, "serial", "import_key")
    usage = _usage(task.get("usage"))
    try:
        cert = x509.load_pem_x509_certificate(_text(task, "certificate", "import_key").encode())
    except ValueError:
        raise ProtocolError("the server sent a certificate that is not PEM X.509") from None
    if _serial_int(serial) != cert.serial_number:
        raise ProtocolError(f"the server's serial {serial} is not the certificate's ({cert.serial_number:x})")
    public = cert.public_key()
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ProtocolError("escrowed keys are RSA or EC; the server's certificate is neither")
    card, created = agent.card, agent._created_keys()
    slot = profile.slot_for(cert_type, usage)
    label = slot.label if slot is not None else str(task.get("label") or cert_type)
    key_id = _choose_key_id(card, bytes.fromhex(slot.key_id) if slot else _key_id(task.get("key_id")),
                            _spki(public), fixed=slot is not None, created=created)
    transport_key = new_transport_key()
    request = {"cert_type": cert_type, "agent_key": public_text(transport_key), "token_serial": agent._card_serial()}
    if profile.rsa_proof != PROOF_RSA_OAEP:  # an older server knows only OAEP: ask only when needed
        request["rsa_proof"] = profile.rsa_proof
    answer = agent.api.post("escrowed-key", request).body
    if answer.get("serial") != serial or answer.get("cert_type") != cert_type:
        raise ProtocolError("the server's escrowed key is for another certificate than the task's")
    existing = card.find_key(key_id)
    if existing is not None and _spki(existing.public_key) == _spki(public):
        agent.progress.step(f"escrowed key {index}/{count} ({cert_type}) is already on the card")
    else:
        context = transport_context(created.workflow_id, cert_type, serial)
        created.claim(key_id)
        agent.store.save_created_keys(created)
        _import(agent, open_private_key(transport_key, answer, context), public, key_id, label, profile)
        agent.progress.step(f"escrowed key {index}/{count} ({cert_type}) imported onto the card "
                            "(it cannot be read out again)")
    if created.record(key_id, _spki(public)):
        agent.store.save_created_keys(created)
    if not any(existing_cert == cert for existing_cert in card.certificates(key_id)):
        agent.progress.step(f"writing certificate {index}/{count} to the card…")
        card.write_certificate(cert, key_id, label, login=profile.cert_write_login, replace=slot is not None)
    history = answer.get("history") or []
    if isinstance(history, list) and history and slot is not None and not slot.key_history:
        # An older server sent them anyway: the card's one key slot holds the current key only.
        agent.progress.step(f"{len(history)} earlier key(s) not put on the card: {profile.description}s have "
                            f"a single {label.lower()} slot ({key_id.hex()}), which holds the current key")
    elif isinstance(history, list) and history:
        _import_history(agent, history, transport_key, cert_type, key_id, label, profile)
    proof = _prove(card, key_id, public, answer, transport_context(created.workflow_id, cert_type, serial))
    return agent.api.post("receipt", {"cert_type": cert_type, "key_id": key_id.hex(), "serial": serial,
                                      "token_serial": agent._card_serial(), "key_proof": b64(proof)}).next_task()


def _import_history(agent: TokenAgent, history: list[Any], transport_key: X25519PrivateKey, cert_type: str,
                    key_id: bytes, label: str, profile: CardProfile) -> None:
    """The owner's earlier escrowed keys, each with its certificate: old mail still opens with the new card.

    PIV: the retired key-management slots 82, 83 …; other cards: IDs after
    the current key's (``02`` → ``0281``, ``0282`` …), labelled with the
    certificate's end of validity.
    """
    from .card_tasks import _serial_int, _spki

    card, created = agent.card, agent._created_keys()
    for number, item in enumerate(history[:20], start=1):
        if not isinstance(item, dict):
            raise ProtocolError("the server's key history has an entry that is not an object")
        try:
            cert = x509.load_pem_x509_certificate(str(item.get("certificate")).encode())
        except ValueError:
            raise ProtocolError("the server's key history has a certificate that is not PEM X.509") from None
        serial = str(item.get("serial") or "")
        public = cert.public_key()
        if _serial_int(serial) != cert.serial_number or not isinstance(public, (rsa.RSAPublicKey,
                                                                                 ec.EllipticCurvePublicKey)):
            raise ProtocolError(f"the server's key history entry {number} does not match its certificate")
        wanted = bytes((0x81 + number,)) if isinstance(card, PivCard) else key_id + bytes((0x80 + number,))
        old_id = _choose_key_id(card, wanted, _spki(public), fixed=isinstance(card, PivCard), created=created)
        old_label = f"{label} (old key, until {cert.not_valid_after_utc:%Y-%m-%d})"
        existing = card.find_key(old_id)
        if existing is None or _spki(existing.public_key) != _spki(public):
            context = transport_context(created.workflow_id, cert_type, serial)
            created.claim(old_id)
            agent.store.save_created_keys(created)
            _import(agent, open_private_key(transport_key, item, context), public, old_id, old_label, profile)
        if created.record(old_id, _spki(public)):
            agent.store.save_created_keys(created)
        if not any(c == cert for c in card.certificates(old_id)):
            card.write_certificate(cert, old_id, old_label, login=profile.cert_write_login,
                                   replace=isinstance(card, PivCard))
        agent.progress.step(f"earlier key {number} (certificate {serial}, until {cert.not_valid_after_utc:%Y-%m-%d}) "
                            f"is on the card under ID {old_id.hex()}: old mail still opens")
    if isinstance(card, PivCard):
        card.write_key_history()  # else no PIV middleware looks at the retired slots


def _choose_key_id(card: Card | PivCard, wanted: bytes, spki: bytes, *, fixed: bool, created: Any) -> bytes:
    """A fixed slot as it is; on a generic token the first ID that is free or already holds this key."""
    from .card_tasks import _spki

    if fixed:
        return wanted
    for candidate in [wanted, *(wanted + bytes((n,)) for n in range(1, _ALTERNATIVE_IDS + 1))]:
        existing = card.find_key(candidate)
        if existing is not None and _spki(existing.public_key) == spki:
            return candidate
        if existing is None and not card.certificates(candidate):
            return candidate
    raise TokenError(f"key IDs {wanted.hex()} and the next {_ALTERNATIVE_IDS} are all taken on "
                     f"{card.describe()}; remove old keys first", code="token.full")


def _import(agent: TokenAgent, pkcs8: bytearray, public: EscrowedPublicKey, key_id: bytes, label: str,
            profile: CardProfile) -> None:
    """Load, check, import, wipe: the plaintext lives only inside this call."""
    from .card_tasks import _spki

    der = bytes(pkcs8)
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError:
        raise ProtocolError("the escrowed key the server sent is not a PKCS#8 private key") from None
    finally:
        wipe(pkcs8)
        scrub(der)
    try:
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) or \
                _spki(key.public_key()) != _spki(public):
            raise ForeignKeyRefused("the escrowed key the server sent is not the key of its certificate; "
                                    "nothing was written to the card")
        try:
            if isinstance(agent.card, PivCard):
                _import_piv(agent.card, key, key_id)
            elif profile.openpgp_key_import:
                _import_openpgp(agent.card, key, key_id)
            else:
                templates = (_rsa_templates(key, key_id, label) if isinstance(key, rsa.RSAPrivateKey)
                             else _ec_templates(key, key_id, label))
                try:
                    if profile.slots:
                        agent.card.delete_key(key_id, login=profile.keygen_login)
                    agent.card.create_key_objects(templates, login=profile.keygen_login)
                finally:
                    scrub_secret_attributes(templates)
        except TokenError as exc:
            if isinstance(key, ec.EllipticCurvePrivateKey) and exc.code == "token.key_import":
                raise _no_ec_import(agent.card, key, exc) from None
            raise
    finally:
        del key


# The private key's parts in an import template (PKCS#11 2.40 §2.1.3, §2.3.4).
SECRET_ATTRIBUTES = (Attribute.VALUE, Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1, Attribute.PRIME_2,
                     Attribute.EXPONENT_1, Attribute.EXPONENT_2, Attribute.COEFFICIENT)


def scrub_secret_attributes(templates: list[dict[Attribute, Any]]) -> None:
    """Best effort (:func:`scrub`): overwrite the private scalar / RSA CRT values once the card has them."""
    for template in templates:
        for attribute in SECRET_ATTRIBUTES:
            value = template.pop(attribute, None)
            if isinstance(value, bytes):
                scrub(value)


def _no_ec_import(card: Card | PivCard, key: ec.EllipticCurvePrivateKey, exc: TokenError) -> TokenError:
    """The card took no EC key: say what to change in the policy, not only what the card answered."""
    return TokenError(f"{card.describe()} cannot take an imported EC {KeySpec.of(key).curve} key ({exc}); ask "
                      "your PKI administrator to give this kind of card an RSA key for the escrowed type "
                      "(personalization.card_types.<card>.key.<type>: rsa-2048) or, for a card that imports "
                      "no keys at all (OpenPGP), to leave the type out for it (card_types.<card>.types)",
                      code="token.key_import_ec")


def _rsa_templates(key: rsa.RSAPrivateKey, key_id: bytes, label: str) -> list[dict[Attribute, Any]]:
    """Private half sensitive and never extractable; a decryption key, not a signing one."""
    numbers = key.private_numbers()
    pub = numbers.public_numbers

    def big(value: int) -> bytes:
        return value.to_bytes((value.bit_length() + 7) // 8, "big")

    common = {Attribute.TOKEN: True, Attribute.KEY_TYPE: KeyType.RSA, Attribute.ID: key_id,
              Attribute.LABEL: label, Attribute.MODULUS: big(pub.n), Attribute.PUBLIC_EXPONENT: big(pub.e)}
    private = {**common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.PRIVATE: True,
               Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.DECRYPT: True,
               Attribute.UNWRAP: True, Attribute.SIGN: False, Attribute.DERIVE: False,
               Attribute.PRIVATE_EXPONENT: big(numbers.d), Attribute.PRIME_1: big(numbers.p),
               Attribute.PRIME_2: big(numbers.q), Attribute.EXPONENT_1: big(numbers.dmp1),
               Attribute.EXPONENT_2: big(numbers.dmq1), Attribute.COEFFICIENT: big(numbers.iqmp)}
    public = {**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.PRIVATE: False,
              Attribute.ENCRYPT: True, Attribute.WRAP: True, Attribute.VERIFY: False}
    return [private, public]


def _ec_templates(key: ec.EllipticCurvePrivateKey, key_id: bytes, label: str) -> list[dict[Attribute, Any]]:
    """Private half sensitive and never extractable; key agreement (ECDH derive) only, no signing."""
    size = (key.curve.key_size + 7) // 8
    point = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    curve = KeySpec.of(key).curve
    assert curve is not None
    common = {Attribute.TOKEN: True, Attribute.KEY_TYPE: KeyType.EC, Attribute.ID: key_id, Attribute.LABEL: label,
              Attribute.EC_PARAMS: EC_PARAMS[curve], Attribute.DERIVE: True}
    private = {**common, Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.PRIVATE: True,
               Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: False,
               Attribute.DECRYPT: False, Attribute.UNWRAP: False,
               Attribute.VALUE: key.private_numbers().private_value.to_bytes(size, "big")}
    # CKA_EC_POINT: the point as a DER OCTET STRING (PKCS#11 2.40 §2.3.3).
    public = {**common, Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.PRIVATE: False,
              Attribute.VERIFY: False, Attribute.EC_POINT: _der_octet_string(point)}
    return [private, public]


def _der_octet_string(value: bytes) -> bytes:
    length = bytes((len(value),)) if len(value) < 0x80 else bytes((0x81, len(value)))
    return b"\x04" + length + value


def _import_piv(card: PivCard, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, key_id: bytes) -> None:
    from yubikit.core import NotSupportedError
    from yubikit.core.smartcard import ApduError
    from yubikit.piv import SLOT

    card.login("so")
    try:
        card.session.put_key(SLOT(piv_slot(key_id)), key)
    except ApduError as exc:
        raise TokenError(f"{card.describe()} did not take the escrowed key in slot {key_id.hex()} "
                         f"(status {exc.sw:04x})", code="token.key_import") from None
    except NotSupportedError as exc:
        raise TokenError(f"{card.describe()} does not support this key type in slot {key_id.hex()} ({exc})",
                         code="token.key_import") from None


def _import_openpgp(card: Card, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, key_id: bytes) -> None:
    """The OpenPGP card's own key import over PC/SC, with the admin PIN the PKCS#11 login settled."""
    from .openpgp_import import import_rsa_key, pcsc_available

    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenError(f"the agent imports only RSA keys onto {card.describe()}", code="token.key_import")
    if not pcsc_available():
        raise UsageError("importing a key onto an OpenPGP card needs pyscard: "
                         "pip install 'openxpki-py-token[piv]'")
    import_rsa_key(card.reader, key_id[0], key, card.admin_pin(), created=int(time.time()),
                   card_name=card.describe())
    card.reinitialize()  # OpenSC reads the slot's new key afresh


def _prove(card: Card | PivCard, key_id: bytes, public: EscrowedPublicKey, answer: dict[str, Any],
           context: bytes) -> bytes:
    """The receipt's proof that the key is on the card: only its holder can answer the challenge."""
    challenge = unb64(answer.get("challenge"), "challenge")
    if isinstance(public, rsa.RSAPublicKey):
        if answer.get("proof", PROOF_RSA_OAEP) not in RSA_PROOFS:
            raise ProtocolError(f"the server's challenge for an RSA key is {answer.get('proof')!r}, which this "
                                "agent cannot answer")
        return _decrypt(card, key_id, challenge, oaep=answer.get("proof", PROOF_RSA_OAEP) == PROOF_RSA_OAEP)
    if answer.get("proof") != PROOF_ECDH:
        raise ProtocolError(f"the server's challenge for an EC key must be {PROOF_ECDH}, not {answer.get('proof')!r}")
    peer = challenge_peer(public, challenge)
    shared = card.ecdh(key_id, peer)
    try:
        return ecdh_proof(shared, challenge, context)
    finally:
        scrub(shared)  # best effort: the raw ECDH secret is the proof's key material


def _decrypt(card: Card | PivCard, key_id: bytes, challenge: bytes, *, oaep: bool) -> bytes:
    """The card decrypts the server's RSA challenge (OAEP, or PKCS#1 v1.5): only the holder of the key can."""
    if isinstance(card, PivCard):
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        card.login("user")
        try:
            return bytes(card.session.decrypt(SLOT(piv_slot(key_id)), challenge,
                                              CHALLENGE_PADDING if oaep else padding.PKCS1v15()))
        except (ApduError, ValueError) as exc:
            raise TokenError(f"{card.describe()} could not decrypt with slot {key_id.hex()} ({exc})",
                             code="token.decrypt") from None
    return card.decrypt(key_id, challenge, Mechanism.RSA_PKCS_OAEP if oaep else Mechanism.RSA_PKCS)
