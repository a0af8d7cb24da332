"""The CA key in an HSM, reached through PKCS#11 (python-pkcs11).

Connecting is lazy: building the backend touches nothing, the first
``load``/``generate``/``key_exists`` loads the module and logs in.  Keys are
generated inside the token as sensitive, never-extractable, sign-only
objects; the public key is stored next to them under the same label and id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from openxpki_py_token.keyspec import KeySpec
from openxpki_py_token.pkcs11.keys import (
    Pkcs11ECPrivateKey,
    Pkcs11RSAPrivateKey,
    TokenKeyRef,
    TokenSigner,
)
from openxpki_py_token.pkcs11.public_keys import EC_PARAMS, public_key_of
from openxpki_py_token.pkcs11.session import PooledSession
from openxpki_py_token.secret import SecretRef
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11_exc

from ...errors import ConfigError, TokenError, TokenKeyNotFound
from .base import CAPrivateKey, KeyBackend
from .token_pool import PooledTokenKey


class Pkcs11KeyBackend(PooledTokenKey, KeyBackend):
    """One private key, by label (and optional CKA_ID), on one token."""

    def __init__(self, *, module: Path | str, token_label: str, key_label: str, pin: SecretRef,
                 key_id: bytes | None = None, spec: KeySpec | None = None,
                 max_sessions: int = 8, origin: str = "ca.key", call_seconds: float | None = None) -> None:
        super().__init__(module=module, token_label=token_label, pin=pin, max_sessions=max_sessions,
                         origin=origin, call_seconds=call_seconds)
        self.ref = TokenKeyRef(key_label, key_id)
        self.spec = spec

    def describe(self) -> str:
        return f"PKCS#11 key {self.ref} on token {self.token_label!r} via {self.module_path}"

    # --- using an existing key -----------------------------------------------------

    def key_exists(self) -> bool:
        return bool(self._run(lambda pooled: self.ref.find(pooled.session, ObjectClass.PRIVATE_KEY)))

    def load_private_key(self) -> CAPrivateKey:
        public = self._run(self._read_public_key)
        return self._wrap(public)

    def _read_public_key(self, pooled: PooledSession) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        session = pooled.session
        found = self.ref.find(session, ObjectClass.PRIVATE_KEY)
        if not found:
            labels = sorted({str(k[Attribute.LABEL]) for k in session.get_objects(
                {Attribute.CLASS: ObjectClass.PRIVATE_KEY})})
            listed = ", ".join(repr(label) for label in labels[:10]) or "none"
            raise TokenKeyNotFound(f"no private key {self.ref} on token {self.token_label!r} "
                                   f"(private keys present: {listed}); check {self.origin}.key_label")
        if len(found) > 1:
            raise TokenKeyNotFound(f"{len(found)} private keys match {self.ref} on token "
                                   f"{self.token_label!r}; set {self.origin}.key_id to pick one")
        private = found[0]
        # The public key object carries the same label and id as its private key.
        public_ref = TokenKeyRef(self.ref.label, bytes(private[Attribute.ID]))
        publics = public_ref.find(session, ObjectClass.PUBLIC_KEY)
        return public_key_of(private, publics[0] if len(publics) == 1 else None, self.describe())

    def key_protection(self) -> dict[str, bool]:
        """The private key's protection flags, for ``ca status`` and audits."""
        names = {
            "token": Attribute.TOKEN, "private": Attribute.PRIVATE, "sensitive": Attribute.SENSITIVE,
            "always_sensitive": Attribute.ALWAYS_SENSITIVE, "extractable": Attribute.EXTRACTABLE,
            "never_extractable": Attribute.NEVER_EXTRACTABLE, "local": Attribute.LOCAL,
            "sign": Attribute.SIGN, "decrypt": Attribute.DECRYPT, "unwrap": Attribute.UNWRAP,
            "derive": Attribute.DERIVE,
        }

        def operation(pooled: PooledSession) -> dict[str, bool]:
            found = self.ref.find(pooled.session, ObjectClass.PRIVATE_KEY)
            if len(found) != 1:
                raise TokenKeyNotFound(f"{self.describe()}: no single private key to inspect")
            return {name: bool(found[0][attr]) for name, attr in names.items()}

        return self._run(operation)  # type: ignore[no-any-return]

    def _wrap(self, public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> CAPrivateKey:
        actual = KeySpec.of(public)
        if self.spec is not None and actual != self.spec:
            raise ConfigError(f"{self.origin}.algorithm: says {self.spec}, but {self.describe()} "
                              f"is {actual}")
        signer = TokenSigner(self._session_pool(), self.ref, seconds=self.call_seconds)
        if isinstance(public, rsa.RSAPublicKey):
            return Pkcs11RSAPrivateKey(signer, public)
        return Pkcs11ECPrivateKey(signer, public)

    # --- creating the key --------------------------------------------------------------

    def generate_private_key(self, spec: KeySpec) -> CAPrivateKey:
        if self.spec is not None and spec != self.spec:
            raise ConfigError(f"{self.origin}.algorithm: says {self.spec}; refusing to generate a {spec} key")

        def operation(pooled: PooledSession) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
            session = pooled.session
            if self.ref.find(session, ObjectClass.PRIVATE_KEY):
                raise TokenError(f"{self.describe()} already exists; an existing CA key is never "
                                 "overwritten", code="token.key_exists")
            public, private = _generate(session, spec, self.ref)
            return public_key_of(private, public, self.describe())

        public = self._run(operation, rw=True)
        return self._wrap(public)


def _generate(session: Any, spec: KeySpec, ref: TokenKeyRef) -> tuple[Any, Any]:
    # The private key can only sign and can never be read out; CKA_TOKEN makes
    # both halves persistent.  The token then sets CKA_NEVER_EXTRACTABLE and
    # CKA_ALWAYS_SENSITIVE itself, which is what an auditor checks.
    private_template = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.SIGN: True,
        Attribute.DECRYPT: False,
        Attribute.UNWRAP: False,
        Attribute.DERIVE: False,
    }
    public_template: dict[Attribute, Any] = {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: False,
        Attribute.VERIFY: True,
        Attribute.ENCRYPT: False,
        Attribute.WRAP: False,
    }
    common = {
        "id": ref.key_id,
        "label": ref.label,
        "store": True,
        "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
        "public_template": public_template,
        "private_template": private_template,
    }
    try:
        if spec.algorithm == "rsa":
            return session.generate_keypair(  # type: ignore[no-any-return]
                KeyType.RSA, spec.rsa_bits, mechanism=Mechanism.RSA_PKCS_KEY_PAIR_GEN, **common)
        assert spec.curve is not None
        public_template[Attribute.EC_PARAMS] = EC_PARAMS[spec.curve]
        return session.generate_keypair(  # type: ignore[no-any-return]
            KeyType.EC, mechanism=Mechanism.EC_KEY_PAIR_GEN, **common)
    except (p11_exc.MechanismInvalid, p11_exc.KeySizeRange, p11_exc.DomainParamsInvalid,
            p11_exc.TemplateInconsistent, p11_exc.AttributeValueInvalid) as exc:
        raise TokenError(f"the token cannot generate a {spec} key ({type(exc).__name__})") from None
