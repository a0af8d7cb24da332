"""The user's card through PKCS#11: find it, log in, keys, signatures, certificates.

One read/write session for the whole run.  PKCS#11 login is per token and
application, and one cannot be the user and the SO at once, so the card
switches logins on demand (:meth:`Card.login`): an OpenPGP card wants the SO
(admin) PIN to generate a key and the user PIN to sign the CSR with it.

The library is loaded through :func:`~openxpki_py_token.pkcs11.module.get_module`
(initialised with OS locking, counted sessions) and the CSR is signed by the
same cryptography key classes the CA uses for its HSM key.  What a login's
answer means is in :mod:`.card_login`; the templates of the key pairs and
certificates the card stores are in :mod:`.card_objects`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11_exc

from .card_login import LOGGED_IN, PIN_REFUSED, login_as, login_refused
from .card_objects import certificate_template, keypair_templates
from .card_profiles import Login, Route, Usage
from .credentials import FACTORY_OPENPGP_ADMIN_PIN, CardCredentials, DerivedCredentials
from .errors import ProtocolError, TokenError, TokenKeyNotFound, TokenNotFound, unknown_admin_credential
from .keyspec import KeySpec
from .pins import CardPins
from .pkcs11.keys import Pkcs11ECPrivateKey, Pkcs11RSAPrivateKey, TokenKeyRef, TokenSigner
from .pkcs11.module import Pkcs11Module, get_module
from .pkcs11.public_keys import public_key_of
from .tokens import find_again, reinitialize_module, select_token, serial_of

log = logging.getLogger("openxpki_py_token")

# Errors that mean the card was pulled or the reader went away.
_CARD_GONE = (p11_exc.DeviceRemoved, p11_exc.TokenNotPresent, p11_exc.SessionHandleInvalid,
              p11_exc.SessionClosed, p11_exc.DeviceError, p11_exc.SlotIDInvalid)

CardPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class CardInfo:
    """CK_TOKEN_INFO of the card, as the server is told."""

    slot_id: int
    serial: str
    manufacturer: str
    model: str
    label: str

    def describe(self) -> str:
        return f"{self.model or 'token'} serial {self.serial}" + (f" ({self.label})" if self.label else "")


@dataclass(frozen=True)
class CardKey:
    """A private key on the card and what it can do."""

    key_id: bytes
    label: str
    public_key: CardPublicKey
    can_sign: bool

    @property
    def spec(self) -> KeySpec | None:
        try:
            return KeySpec.of(self.public_key)
        except ValueError:
            return None  # a size or curve the server would never ask for


class Card:
    """One token in one slot of one PKCS#11 module (use as a context manager)."""

    route: Route = "pkcs11"

    def __init__(self, module_path: Path, pins: CardPins, *, slot_id: int | None = None,
                 token_label: str | None = None, credentials: CardCredentials | None = None) -> None:
        self.module_path = module_path
        self.pins = pins
        self.credentials = credentials if credentials is not None else CardCredentials()
        #: The factory admin PIN was replaced by the derived one in this run.
        self.admin_replaced = False
        self.slot_id = slot_id
        self.token_label = token_label
        self.module: Pkcs11Module | None = None
        self.info: CardInfo | None = None
        self._token: Any = None
        self._session: Any = None
        self._generation = 0
        self._role: Login | None = None

    # --- opening and closing -----------------------------------------------------------

    def open(self) -> CardInfo:
        self.module = get_module(self.module_path)
        self.module.lib()
        try:
            self._token = select_token(self.module, slot_id=self.slot_id, token_label=self.token_label)
        except TokenNotFound:
            # SoftHSM (and some drivers) see tokens only as of C_Initialize.
            if self.module.open_sessions:
                raise
            reinitialize_module(self.module)
            self._token = select_token(self.module, slot_id=self.slot_id, token_label=self.token_label)
        token = self._token
        self.info = CardInfo(slot_id=int(token.slot.slot_id),
                             serial=serial_of(token),
                             manufacturer=token.manufacturer_id.strip(), model=token.model.strip(),
                             label=token.label.strip())
        self._open_session()
        return self.info

    def close(self) -> None:
        if self._session is None or self.module is None:
            return
        session, self._session = self._session, None
        with contextlib.suppress(p11_exc.PKCS11Error):
            if self._role is not None:
                self.module.logout(session)
        self._role = None
        self.module.close_session(session, self._generation)

    def __enter__(self) -> Card:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return self.info.describe() if self.info is not None else "the card"

    def finish(self) -> str | None:
        """After the last certificate: nothing more on a PKCS#11 token (see PivCard.finish)."""
        return None

    def _open_session(self) -> None:
        assert self.module is not None
        try:
            self._generation = self.module.generation
            self._session = self.module.open_session(self._token, rw=True)
        except p11_exc.TokenWriteProtected:
            raise TokenError(f"{self.describe()} is write-protected: it cannot take keys") from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"cannot open a session on {self.describe()} ({type(exc).__name__}); "
                             "is the card still in the reader?") from None
        self._role = None

    def reinitialize(self) -> None:
        """Finalise and initialise the module again, then find this card again.

        OpenSC 0.23 hands out unusable objects from C_GenerateKeyPair until
        the next C_Initialize.
        """
        assert self.module is not None and self.info is not None
        self.close()
        reinitialize_module(self.module)
        token = find_again(self.module, serial=self.info.serial, label=self.info.label)
        if token is None:
            raise TokenNotFound(f"{self.describe()} is gone after re-initialising the PKCS#11 module: "
                                "is it still in the reader?")
        self._token = token
        self._open_session()

    @property
    def reader(self) -> str:
        """The PC/SC reader the card is in (OpenSC names each slot after its reader)."""
        return str(self._token.slot.slot_description).strip()

    def admin_pin(self) -> str:
        """The admin (SO) PIN this run logs in with: the per-card one once it replaced the factory PIN."""
        self.login("so")
        derived = self.credentials.derived(self.route)
        if derived is not None and derived.admin_pin is not None:
            return derived.admin_pin
        return self.pins.get("so", self.describe())

    # --- logging in ------------------------------------------------------------------------

    def login(self, role: Login) -> None:
        """Be logged in as ``role`` (switching from the other one if needed)."""
        assert self.module is not None
        if self._role == role:
            return
        if self._role is not None:
            with contextlib.suppress(p11_exc.PKCS11Error):
                self.module.logout(self._session)
            self._role = None
        derived = self.credentials.derived(self.route) if role == "so" else None
        if derived is not None:
            self._derived_so_login(derived)
            return
        pin = self.pins.get(role, self.describe())
        rv = self._log_in(role, pin)
        if rv in LOGGED_IN:
            self._role = role
            return
        self.pins.forget(role)
        raise self._refused(role, rv)

    def _log_in(self, role: Login, pin: str) -> int:
        assert self.module is not None
        return login_as(self.module, self._session, role, pin)

    def _derived_so_login(self, derived: DerivedCredentials) -> None:
        """The admin PIN the server derived; a card still on the factory PIN gets the derived one first.

        The derived PIN is tried first (later personalizations then cost no
        try); a card on neither spends two of its admin PIN tries and is refused.
        """
        if derived.admin_pin is None:
            raise ProtocolError("the server sent no admin PIN for this card")
        rv = self._log_in("so", derived.admin_pin)
        if rv not in PIN_REFUSED:
            if rv not in LOGGED_IN:
                raise self._refused("so", rv)
            self._role = "so"
            return
        rv = self._log_in("so", FACTORY_OPENPGP_ADMIN_PIN)
        if rv in PIN_REFUSED:
            raise unknown_admin_credential(self.describe(), "admin PIN",
                                           "(its OpenPGP application, e.g. with 'ykman openpgp reset')")
        if rv not in LOGGED_IN:
            raise self._refused("so", rv)
        self._role = "so"
        try:
            self._session.set_pin(FACTORY_OPENPGP_ADMIN_PIN, derived.admin_pin)
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()} did not take its new admin PIN ({type(exc).__name__})",
                             code="token.set_pin") from None
        self.admin_replaced = True
        log.info("%s: factory admin PIN replaced by the per-card one", self.describe())

    def _refused(self, role: Login, rv: int) -> TokenError:
        return login_refused(self._token, role, rv, self.describe())

    # --- keys ------------------------------------------------------------------------------

    def find_key(self, key_id: bytes) -> CardKey | None:
        """The private key with this CKA_ID, or None (private objects need the user login)."""
        self.login("user")
        found = self._objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        if not found:
            return None
        if len(found) > 1:
            raise TokenError(f"{self.describe()} holds {len(found)} private keys with ID "
                             f"{key_id.hex()}; remove the extra ones", code="token.key_ambiguous")
        private = found[0]
        publics = self._objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id})
        where = f"key {key_id.hex()} on {self.describe()}"
        try:
            public = public_key_of(private, publics[0] if len(publics) == 1 else None, where)
            label = str(private[Attribute.LABEL])
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{where}: cannot read the public key ({type(exc).__name__})") from None
        try:
            can_sign = bool(private[Attribute.SIGN])
        except p11_exc.PKCS11Error:
            can_sign = True  # the card does not say: try it
        return CardKey(key_id=key_id, label=label, public_key=public, can_sign=can_sign)

    def key_attributes(self, key_id: bytes, names: tuple[Attribute, ...]) -> dict[Attribute, Any]:
        """Attributes of the private key (for checks and tests); unreadable ones are None."""
        self.login("user")
        found = self._objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        if len(found) != 1:
            raise TokenKeyNotFound(f"no single private key with ID {key_id.hex()} on {self.describe()}")
        values: dict[Attribute, Any] = {}
        for name in names:
            try:
                values[name] = found[0][name]
            except p11_exc.PKCS11Error:
                values[name] = None
        return values

    def generate_key(self, spec: KeySpec, key_id: bytes, label: str, usage: Usage, *,
                     login: Login) -> None:
        """A new key pair on the card: never extractable, usable as ``usage`` says."""
        self.login(login)
        private_template, public_template, capabilities = keypair_templates(spec, usage)
        common: dict[str, Any] = {
            "id": key_id, "label": label, "store": True, "capabilities": capabilities,
            "public_template": public_template, "private_template": private_template,
        }
        try:
            if spec.algorithm == "rsa":
                self._session.generate_keypair(KeyType.RSA, spec.rsa_bits,
                                               mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN, **common)
            else:
                self._session.generate_keypair(KeyType.EC, mechanism=Mechanism.EC_KEY_PAIR_GEN, **common)
        except (p11_exc.MechanismInvalid, p11_exc.KeySizeRange, p11_exc.DomainParamsInvalid,
                p11_exc.TemplateInconsistent, p11_exc.AttributeValueInvalid,
                p11_exc.AttributeTypeInvalid) as exc:
            raise TokenError(f"{self.describe()} cannot generate a {spec_text(spec)} key with ID "
                             f"{key_id.hex()} ({type(exc).__name__}); this card does not fit the "
                             "certificate policy", code="token.keygen") from None
        except _CARD_GONE as exc:
            raise TokenError(f"{self.describe()} went away during key generation "
                             f"({type(exc).__name__}): put it back and run again") from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()}: key generation failed ({type(exc).__name__})",
                             code="token.keygen") from None

    def delete_key(self, key_id: bytes, *, login: Login) -> None:
        """Best effort: remove the key pair with this ID before a fixed slot gets a new one.

        An OpenPGP card cannot delete a key, but its key generation overwrites
        the slot; a token that keeps objects (SoftHSM) must not end up with two
        keys under one ID.
        """
        self.login(login)
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for obj in self._objects({Attribute.CLASS: cls, Attribute.ID: key_id}):
                try:
                    obj.destroy()
                except _CARD_GONE:
                    raise
                except p11_exc.PKCS11Error as exc:
                    log.info("%s: key %s not deleted (%s); key generation overwrites it",
                             self.describe(), key_id.hex(), type(exc).__name__)

    def private_key(self, key: CardKey) -> Pkcs11RSAPrivateKey | Pkcs11ECPrivateKey:
        """A cryptography private key whose ``sign`` runs on the card (for the CSR)."""
        signer = _CardSigner(self, key)
        if isinstance(key.public_key, rsa.RSAPublicKey):
            return Pkcs11RSAPrivateKey(signer, key.public_key)
        return Pkcs11ECPrivateKey(signer, key.public_key)

    def _user_key(self, key_id: bytes) -> Any:
        """The private key ``key_id``, after the user's login (a key gone since it was found is an error)."""
        self.login("user")
        found = self._objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key_id})
        if len(found) != 1:
            raise TokenKeyNotFound(f"key {key_id.hex()} is gone from {self.describe()}")
        return found[0]

    def _went_away(self, doing: str, exc: Exception) -> TokenError:
        return TokenError(f"{self.describe()} went away while {doing} ({type(exc).__name__}): "
                          "put it back and run again")

    def sign(self, key_id: bytes, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        key = self._user_key(key_id)
        try:
            return bytes(key.sign(data, mechanism=mechanism, mechanism_param=param))
        except _CARD_GONE as exc:
            raise self._went_away("signing", exc) from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(
                f"{self.describe()} refused to sign with key {key_id.hex()} using {mechanism.name} "
                f"({type(exc).__name__}); the CSR that proves the key is yours needs that signature",
                code="token.cannot_sign") from None

    def create_key_objects(self, templates: list[dict[Attribute, Any]], *, login: Login) -> None:
        """Store key objects given in full (an escrowed key's import: :mod:`.key_import`)."""
        self.login(login)
        try:
            for template in templates:
                self._session.create_object(template)
        except _CARD_GONE as exc:
            raise self._went_away("importing a key", exc) from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()} refused to import the key ({type(exc).__name__})",
                             code="token.key_import") from None

    def decrypt(self, key_id: bytes, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        """Decrypt with the card's private key (the escrow receipt's proof)."""
        key = self._user_key(key_id)
        try:
            return bytes(key.decrypt(data, mechanism=mechanism, mechanism_param=param))
        except _CARD_GONE as exc:
            raise self._went_away("decrypting", exc) from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()} refused to decrypt with key {key_id.hex()} "
                             f"({type(exc).__name__})", code="token.decrypt") from None

    def ecdh(self, key_id: bytes, peer: ec.EllipticCurvePublicKey) -> bytes:
        """The raw ECDH secret of the card's key and ``peer`` (CKM_ECDH1_DERIVE, no KDF): the escrow receipt's proof.

        The card derives a session-only generic secret; only that value is read, never the card's key.
        """
        key = self._user_key(key_id)
        point = peer.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        try:
            secret = key.derive_key(KeyType.GENERIC_SECRET, 8 * ((peer.curve.key_size + 7) // 8),
                                    mechanism=Mechanism.ECDH1_DERIVE, mechanism_param=(KDF.NULL, None, point),
                                    template={Attribute.TOKEN: False, Attribute.SENSITIVE: False,
                                              Attribute.EXTRACTABLE: True})
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                secret.destroy()
        except _CARD_GONE as exc:
            raise self._went_away("deriving the ECDH secret", exc) from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()} refused ECDH with key {key_id.hex()} ({type(exc).__name__})",
                             code="token.derive") from None

    # --- certificates ----------------------------------------------------------------------

    def certificates(self, key_id: bytes) -> list[x509.Certificate]:
        certs = []
        for obj in self._objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key_id}):
            with contextlib.suppress(p11_exc.PKCS11Error, ValueError):
                certs.append(x509.load_der_x509_certificate(bytes(obj[Attribute.VALUE])))
        return certs

    def write_certificate(self, cert: x509.Certificate, key_id: bytes, label: str, *,
                          login: Login, replace: bool) -> None:
        """Store ``cert`` next to its key (same CKA_ID).

        ``replace`` deletes older certificates with that ID first: only for a
        key slot the card profile gives to this PKI (such cards hold one
        certificate per slot); otherwise nothing already on the card is removed.
        """
        self.login(login)
        try:
            for old in self._objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: key_id}
                                     ) if replace else ():
                try:
                    old.destroy()
                except _CARD_GONE:
                    raise
                except p11_exc.PKCS11Error as exc:
                    # A card with one certificate per key slot (OpenPGP) may refuse
                    # to delete and simply overwrites on create.
                    log.info("%s: old certificate %s not deleted (%s)", self.describe(),
                             key_id.hex(), type(exc).__name__)
            self._session.create_object(certificate_template(cert, key_id, label))
        except _CARD_GONE as exc:
            raise self._went_away("writing the certificate", exc) from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()} refused to store the certificate for key "
                             f"{key_id.hex()} ({type(exc).__name__})", code="token.cert_write") from None

    # --- helpers ---------------------------------------------------------------------------

    def _objects(self, template: dict[Attribute, Any]) -> list[Any]:
        try:
            return list(self._session.get_objects(template))
        except _CARD_GONE as exc:
            raise TokenError(f"{self.describe()} went away ({type(exc).__name__}): put it back "
                             "and run again") from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()}: cannot list its objects ({type(exc).__name__})") from None


class _CardSigner(TokenSigner):
    """The CA's key classes sign through a TokenSigner; this one signs on the card.

    No session pool here: the card has one session, owned by :class:`Card`.
    """

    def __init__(self, card: Card, key: CardKey) -> None:  # noqa: D107 - no pool to pass up
        self._card = card
        self.ref = TokenKeyRef(key.label, key.key_id)

    def describe(self) -> str:
        return f"key {self.ref} on {self._card.describe()}"

    def sign(self, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        assert self.ref.key_id is not None
        return self._card.sign(self.ref.key_id, data, mechanism, param)


def spec_text(spec: KeySpec) -> str:
    """``RSA-2048`` / ``EC P-256``, as the progress lines show it."""
    return f"RSA-{spec.rsa_bits}" if spec.algorithm == "rsa" else f"EC {spec.curve}"
