"""A PIV card (YubiKey, PIV smartcards) through Yubico's yubikit over PC/SC.

OpenSC 0.23's PKCS#11 reads PIV cards but cannot personalize them (no key
generation, no certificate write), so the agent talks PIV itself here, with
the optional extra ``openxpki-py-token[piv]`` (``yubikey-manager``, which
brings ``pyscard``).  :class:`PivCard` offers what the task loop uses of
:class:`~openxpki_py_token.card.Card`; a key's ID is its PIV slot number
(``9a`` authentication, ``9d`` key management), which OpenSC later shows
as IDs 01 and 03; slots and the data objects written are in :mod:`.piv_objects`.

At the end of a personalization (:meth:`PivCard.finish`) a fresh CHUID and
CCC are written: Windows caches a card's contents by its CHUID and needs it
set and unique, macOS wants the CCC.  The card's serial, as the server
knows it, is the YubiKey serial, else the CHUID's GUID as found at start.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from pkcs11 import Mechanism

from .apdu import PIV_AID, select_application
from .card import CardInfo, CardKey
from .card_profiles import Login, Route, Usage
from .credentials import FACTORY_MANAGEMENT_KEY, FACTORY_PUK, CardCredentials, DerivedCredentials
from .errors import ProtocolError, TokenError, TokenNotFound, TokenPinError, UsageError, unknown_admin_credential
from .keyspec import KeySpec
from .pins import CardPins
from .piv_objects import SLOT_NAMES, chuid_guid, key_history, new_ccc, new_chuid, piv_key_type, piv_slot
from .pkcs11.keys import Pkcs11ECPrivateKey, Pkcs11RSAPrivateKey, TokenKeyRef, TokenSigner

if TYPE_CHECKING:
    from yubikit.piv import PivSession

log = logging.getLogger("openxpki_py_token")

_PKCS1_HASHES: dict[Mechanism, hashes.HashAlgorithm] = {
    Mechanism.SHA256_RSA_PKCS: hashes.SHA256(), Mechanism.SHA384_RSA_PKCS: hashes.SHA384(),
    Mechanism.SHA512_RSA_PKCS: hashes.SHA512()}
_DIGESTS: dict[int, hashes.HashAlgorithm] = {32: hashes.SHA256(), 48: hashes.SHA384(), 64: hashes.SHA512()}
INSTALL_HINT = "PIV cards need the PIV extra: pip install 'openxpki-py-token[piv]'"


def piv_available() -> bool:
    """Whether the optional PIV route is installed."""
    try:
        import smartcard.System  # noqa: F401
        import yubikit.piv  # noqa: F401
    except ImportError:
        return False
    return True


def find_piv_reader(reader_filter: str | None = None) -> str | None:
    """The first reader (name containing ``reader_filter``) whose card answers the PIV SELECT."""
    found = select_application(PIV_AID, reader_filter)
    if found is None:
        return None
    connection, reader = found
    connection.disconnect()
    connection.release()
    return reader


class PivCard:
    """One PIV card in one reader (use as a context manager)."""

    route: Route = "piv"

    def __init__(self, pins: CardPins, credentials: CardCredentials, *, reader: str | None = None) -> None:
        if not piv_available():
            raise UsageError(INSTALL_HINT)
        self.pins = pins
        self.credentials = credentials
        self.reader_filter = reader
        self.info: CardInfo | None = None
        self._connection: Any = None
        self._session: PivSession | None = None
        self._roles: set[Login] = set()
        #: The factory management key and PUK were replaced by the derived ones in this run.
        self.admin_replaced = False

    # --- opening and closing -----------------------------------------------------------

    def open(self) -> CardInfo:
        from ykman.pcsc import ScardSmartCardConnection
        from yubikit.core import NotSupportedError
        from yubikit.piv import PivSession

        reader = find_piv_reader(self.reader_filter)
        if reader is None:
            where = f" in a reader matching {self.reader_filter!r}" if self.reader_filter else ""
            raise TokenNotFound(f"no PIV card found{where}: insert your card and run again")
        from smartcard.System import readers

        chosen = next(r for r in readers() if str(r) == reader)
        # ykman's connection class is untyped; it only wraps pyscard's connection.
        self._connection = ScardSmartCardConnection(chosen.createConnection())  # type: ignore[no-untyped-call]
        session = self._session = PivSession(self._connection)
        try:
            serial = str(session.get_serial())
            manufacturer = "Yubico"
        except (NotSupportedError, _apdu_error()):
            serial, manufacturer = self._chuid_guid() or "unknown", "PIV"
        version = ".".join(str(part) for part in session.version)
        self.info = CardInfo(slot_id=0, serial=serial, manufacturer=manufacturer,
                             model=f"PIV card (version {version})", label=reader)
        return self.info

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = self._session = None
        self._roles.clear()

    def __enter__(self) -> PivCard:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.info.describe() if self.info is not None else "the PIV card"

    def reinitialize(self) -> None:
        """Nothing to do: yubikit's answers are usable at once (a PKCS#11 quirk elsewhere)."""

    @property
    def session(self) -> PivSession:
        if self._session is None:
            raise TokenError("the PIV card is not open")
        return self._session

    # --- logging in ------------------------------------------------------------------------

    def login(self, role: Login) -> None:
        """``user``: VERIFY the PIN; ``so``: mutual authentication with the management key."""
        from yubikit.core import InvalidPinError

        if role in self._roles:
            return
        if role == "user":
            try:
                self.session.verify_pin(self.pins.get("user", self.describe()))
            except InvalidPinError as exc:
                self.pins.forget("user")
                left = exc.attempts_remaining
                if left == 0:
                    raise TokenPinError(f"{self.describe()}: the PIN is blocked; ask your PKI "
                                        "administrator to unblock it with the PUK") from None
                raise TokenPinError(f"{self.describe()} refused the PIN ({left} tries left); run again "
                                    "with the right PIN") from None
        else:
            self._admin_login()
        self._roles.add(role)

    def unblock_pin(self, puk: str, new_pin: str) -> None:
        """RESET RETRY COUNTER: the PUK unblocks the PIN and sets ``new_pin``; a wrong PUK changes nothing."""
        from yubikit.core import InvalidPinError, NotSupportedError
        from yubikit.core.smartcard import ApduError

        try:
            self.session.unblock_pin(puk, new_pin)
        except InvalidPinError as exc:
            left = exc.attempts_remaining
            raise TokenPinError(
                f"{self.describe()} refused the PUK your PKI holds for it ({left} PUK tries left); its PIN was not "
                "changed. The card was personalized elsewhere or reset: ask your PKI administrator",
                code="card.puk_refused") from None
        except (ApduError, NotSupportedError) as exc:
            raise TokenError(f"{self.describe()} did not unblock its PIN ({exc})", code="token.unblock") from None
        self._roles.discard("user")

    def _admin_login(self) -> None:
        """Management-key authentication: the server's derived key, else the local options (module doc)."""
        # Derived values need a serial that stays: a CHUID GUID is renewed at
        # every personalization (and "unknown" would give every card the same).
        stable = self.info is not None and self.info.manufacturer == "Yubico"
        derived = self.credentials.derived(self.route) if stable else None
        if not stable and self.credentials.from_server(self.route):
            log.warning("%s has no hardware serial: per-card admin credentials are not used for it",
                        self.describe())
        if derived is not None:
            self._derived_login(derived)
            return
        key = self.credentials.current_management_key()
        if not self._authenticate(key):
            raise TokenPinError(f"{self.describe()} refused the management key; pass the card's "
                                "key with --management-key-file or --management-key-env",
                                code="token.management_key")
        if key == FACTORY_MANAGEMENT_KEY and self.credentials.rotate_to is None:
            log.warning("%s still has the factory PIV management key: anyone can replace its keys "
                        "and certificates; run with --rotate-management-key FILE (and escrow FILE), or "
                        "ask your PKI administrator to enable per-card admin credentials on the server",
                        self.describe())

    def _authenticate(self, key: bytes) -> bool:
        from yubikit.core.smartcard import ApduError

        try:
            self.session.authenticate(key)
        except (ApduError, ValueError, _bad_response()):
            return False
        return True

    def _derived_login(self, derived: DerivedCredentials) -> None:
        """The card's derived key; a card still on its factory values gets the derived ones first."""
        if derived.management_key is None or derived.puk is None:
            raise ProtocolError("the server sent no PIV management key and PUK for this PIV card")
        if self._authenticate(derived.management_key):
            return
        if not self._authenticate(FACTORY_MANAGEMENT_KEY):
            raise unknown_admin_credential(self.describe(), "management key",
                                           "(its PIV application, e.g. with 'ykman piv reset')")
        self._replace_puk(derived.puk)
        from yubikit.piv import MANAGEMENT_KEY_TYPE

        # AES-192 where the card has it (YubiKey 5.4+), else 3DES; same length.
        key_type = (MANAGEMENT_KEY_TYPE.AES192 if self.session.version >= (5, 4, 0)
                    else MANAGEMENT_KEY_TYPE.TDES)
        self.session.set_management_key(key_type, derived.management_key)
        if not self._authenticate(derived.management_key):
            raise TokenError(f"{self.describe()} did not take its new management key", code="token.management_key")
        self.admin_replaced = True
        log.info("%s: factory management key and PUK replaced by the per-card ones", self.describe())

    def _replace_puk(self, puk: str) -> None:
        """Factory PUK -> derived one; a PUK that is already the derived one stays (a rerun)."""
        from yubikit.core import InvalidPinError, NotSupportedError
        from yubikit.core.smartcard import ApduError

        try:
            is_default: bool | None = self.session.get_puk_metadata().default_value
        except (NotSupportedError, ApduError):
            is_default = None  # no metadata (not a YubiKey 5.3+): try the factory PUK first
        if is_default is not False:
            try:
                self.session.change_puk(FACTORY_PUK, puk)
                return
            except InvalidPinError:
                pass
        try:
            self.session.change_puk(puk, puk)  # proves it is ours; a right PUK resets its counter
        except InvalidPinError:
            raise unknown_admin_credential(self.describe(), "PUK",
                                           "(its PIV application, e.g. with 'ykman piv reset')") from None

    # --- keys ---------------------------------------------------------------------------------

    def find_key(self, key_id: bytes) -> CardKey | None:
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        slot = piv_slot(key_id)
        try:
            metadata = self.session.get_slot_metadata(SLOT(slot))
        except ApduError:
            return None  # an empty slot
        public = metadata.public_key
        if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            return None  # a key type the server never asks for (25519)
        return CardKey(key_id=key_id, label=SLOT_NAMES.get(slot, f"slot {slot:02x}"), public_key=public,
                       can_sign=True)

    def generate_key(self, spec: KeySpec, key_id: bytes, label: str, usage: Usage, *, login: Login) -> None:
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        self.login("so")
        try:
            self.session.generate_key(SLOT(piv_slot(key_id)), piv_key_type(spec))
        except ApduError as exc:
            raise TokenError(f"{self.describe()} could not generate a key in slot {key_id.hex()} "
                             f"(status {exc.sw:04x})", code="token.keygen") from None

    def delete_key(self, key_id: bytes, *, login: Login) -> None:
        """A PIV slot is overwritten by the next key generation: nothing to delete first."""

    def private_key(self, key: CardKey) -> Pkcs11RSAPrivateKey | Pkcs11ECPrivateKey:
        self.login("user")
        signer = _PivSigner(self, key)
        if isinstance(key.public_key, rsa.RSAPublicKey):
            return Pkcs11RSAPrivateKey(signer, key.public_key)
        return Pkcs11ECPrivateKey(signer, key.public_key)

    def sign(self, key: CardKey, data: bytes, mechanism: Mechanism) -> bytes:
        """What the shared key classes ask for, done the PIV way (raw RSA, ECDSA on a digest)."""
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import KEY_TYPE, SLOT

        slot = SLOT(piv_slot(key.key_id))
        key_type = KEY_TYPE.from_public_key(key.public_key)
        try:
            if mechanism in _PKCS1_HASHES:
                return self.session.sign(slot, key_type, data, _PKCS1_HASHES[mechanism], padding.PKCS1v15())
            if mechanism == Mechanism.ECDSA and len(data) in _DIGESTS:
                # yubikit accepts Prehashed for EC keys (then it sends the digest as is),
                # though its signature says HashAlgorithm.
                prehashed: Any = utils.Prehashed(_DIGESTS[len(data)])
                der = self.session.sign(slot, key_type, data, prehashed)
                r, s = utils.decode_dss_signature(der)
                size = (key.public_key.key_size + 7) // 8
                return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        except ApduError as exc:
            raise TokenError(f"{self.describe()} refused to sign with slot {key.key_id.hex()} "
                             f"(status {exc.sw:04x})", code="token.sign") from None
        raise TokenError(f"PIV keys sign PKCS#1 v1.5 (SHA-2) or ECDSA here, not {mechanism.name}",
                         code="token.mechanism")

    def ecdh(self, key_id: bytes, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The ECDH secret of the slot's key and ``peer`` (GENERAL AUTHENTICATE): the escrow receipt's proof."""
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        self.login("user")
        try:
            return bytes(self.session.calculate_secret(SLOT(piv_slot(key_id)), peer))
        except (ApduError, ValueError) as exc:
            raise TokenError(f"{self.describe()} refused ECDH with slot {key_id.hex()} ({exc})",
                             code="token.derive") from None

    # --- attestation ---------------------------------------------------------------------------

    def attestation_certificate(self) -> x509.Certificate | None:
        """The card's attestation key certificate (YubiKey slot f9), if it has one."""
        from yubikit.core import BadResponseError, NotSupportedError
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        try:
            return self.session.get_certificate(SLOT.ATTESTATION)
        except (ApduError, BadResponseError, NotSupportedError, ValueError):
            return None  # not a YubiKey (4.3+), or its f9 certificate was removed

    def attest(self, key_id: bytes) -> dict[str, str] | None:
        """The card's proof that it generated the key in this slot (for the CSR post), or None.

        Per-key attestation certificate (INS f9) and the slot f9 certificate
        that signed it, as PEM; the server checks the chain up to the
        vendor's root.  A card that cannot attest gives None, not an error.
        """
        from yubikit.core import BadResponseError, NotSupportedError
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        device = self.attestation_certificate()
        if device is None:
            return None
        try:
            attested = self.session.attest_key(SLOT(piv_slot(key_id)))
        except (ApduError, BadResponseError, NotSupportedError, ValueError) as exc:
            log.info("%s did not attest slot %s: %s", self.describe(), key_id.hex(), exc)
            return None  # e.g. an imported key: the card attests only keys it generated
        return {"format": "yubico-piv", "key_certificate": _pem(attested), "device_certificate": _pem(device)}

    # --- certificates and data objects --------------------------------------------------------

    def certificates(self, key_id: bytes) -> list[x509.Certificate]:
        from yubikit.core import BadResponseError
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        try:
            return [self.session.get_certificate(SLOT(piv_slot(key_id)))]
        except (ApduError, BadResponseError):
            return []

    def write_certificate(self, cert: x509.Certificate, key_id: bytes, label: str, *, login: Login,
                          replace: bool) -> None:
        """Into the slot's certificate object (one per slot: it always replaces)."""
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import SLOT

        self.login("so")
        try:
            self.session.put_certificate(SLOT(piv_slot(key_id)), cert)
        except ApduError as exc:
            raise TokenError(f"{self.describe()} did not take the certificate for slot {key_id.hex()} "
                             f"(status {exc.sw:04x})", code="token.write") from None

    def write_key_history(self) -> int:
        """The Key History object (SP 800-73-4 Part 1 §3.3.3): how many retired slots from 82 on hold a key and its
        certificate.  PIV middleware reads it first: without it OpenSC never looks at 82-95 and old mail does not open.
        """
        from yubikit.piv import OBJECT_ID

        on_card = 0
        while on_card < 20 and self.certificates(bytes((0x82 + on_card,))):
            on_card += 1
        self.login("so")
        self.session.put_object(OBJECT_ID.KEY_HISTORY, key_history(on_card))
        return on_card

    def finish(self) -> str | None:
        """New CHUID + CCC, then the management key rotation; returns where the new key went."""
        from yubikit.piv import MANAGEMENT_KEY_TYPE, OBJECT_ID

        self.login("so")
        self.session.put_object(OBJECT_ID.CHUID, new_chuid())
        self.session.put_object(OBJECT_ID.CAPABILITY, new_ccc())
        if self.credentials.rotate_to is None:
            return None
        # AES-192 where the card has it (YubiKey 5.4+), else 3DES; same length.
        key_type = (MANAGEMENT_KEY_TYPE.AES192 if self.session.version >= (5, 4, 0)
                    else MANAGEMENT_KEY_TYPE.TDES)
        new_key = os.urandom(24)
        where = self.credentials.escrow(new_key)  # on disk before the card depends on it
        self.session.set_management_key(key_type, new_key)
        return str(where)

    def _chuid_guid(self) -> str | None:
        from yubikit.core.smartcard import ApduError
        from yubikit.piv import OBJECT_ID

        try:
            chuid = self.session.get_object(OBJECT_ID.CHUID)
        except ApduError:
            return None
        return chuid_guid(chuid)


class _PivSigner(TokenSigner):
    """The shared key classes sign through a TokenSigner; this one asks the PIV card."""

    def __init__(self, card: PivCard, key: CardKey) -> None:  # noqa: D107 - no pool to pass up
        self._card = card
        self._key = key
        self.ref = TokenKeyRef(key.label, key.key_id)

    def describe(self) -> str:
        return f"slot {self._key.key_id.hex()} on {self._card.describe()}"

    def sign(self, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        return self._card.sign(self._key, data, mechanism)


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _apdu_error() -> type[Exception]:
    from yubikit.core.smartcard import ApduError

    return ApduError


def _bad_response() -> type[Exception]:
    from yubikit.core import BadResponseError

    return BadResponseError
