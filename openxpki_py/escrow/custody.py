"""The key-recovery key: an AES-256 key in the HSM that encrypts every escrowed private key.

It is created inside the token (``openxpki-py escrow init-key``) as a
sensitive, never-extractable key that can only encrypt and decrypt (no
wrap/unwrap of other token keys, no sign), under its own label next to the
CA key: the CA key never touches escrow, and this key signs nothing.
Escrowed keys are sealed with AES-GCM inside the HSM (``C_Encrypt`` with
``CKM_AES_GCM``); the associated data binds each blob to its escrow record,
so a blob copied onto another user's record does not open.
"""

from __future__ import annotations

import os
from typing import Any

from openxpki_py_token.key_transport import scrub
from openxpki_py_token.pkcs11.keys import TokenKeyRef
from openxpki_py_token.pkcs11.session import PooledSession
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11_exc
from pkcs11.mechanisms import GCMParams

from ..crypto.keys.token_pool import PooledTokenKey
from ..errors import TokenError, TokenKeyNotFound
from .config import EscrowKeyConfig

#: Recorded with every blob, so that a later key or mechanism can be told apart.
WRAP_ALGORITHM = "pkcs11-aes-256-gcm"
_NONCE_BYTES = 12


class EscrowKeyMissing(TokenKeyNotFound):
    code = "escrow.key_missing"


class EscrowBlobRefused(TokenError):
    """The HSM would not open a blob: changed in the database, or moved to another record."""

    code = "escrow.blob"


class EscrowCustodian(PooledTokenKey):
    """Encrypts and decrypts escrowed keys with the key-recovery key; the key itself never leaves the HSM."""

    def __init__(self, config: EscrowKeyConfig) -> None:
        super().__init__(module=config.module, token_label=config.token_label, pin=config.pin, max_sessions=8,
                         origin=config.origin)
        self.config = config
        self.ref = TokenKeyRef(config.key_label)

    def describe(self) -> str:
        return self.config.describe()

    def _key(self, pooled: PooledSession) -> Any:
        found = self.ref.find(pooled.session, ObjectClass.SECRET_KEY)
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise EscrowKeyMissing(f"{what} secret key {self.ref} on token {self.config.token_label!r}: run "
                                   "'openxpki-py escrow init-key' (or check escrow.key.key_label)")
        return found[0]

    # --- the key itself ------------------------------------------------------------

    def key_exists(self) -> bool:
        return bool(self._run(lambda pooled: self.ref.find(pooled.session, ObjectClass.SECRET_KEY)))

    def create_key(self) -> None:
        """AES-256 made inside the token; an existing escrow key is never replaced (its blobs would be lost)."""
        def operation(pooled: PooledSession) -> None:
            if self.ref.find(pooled.session, ObjectClass.SECRET_KEY):
                raise TokenError(f"{self.describe()} exists already; it is never replaced (every escrowed "
                                 "key is encrypted under it)", code="escrow.key_exists")
            pooled.session.generate_key(KeyType.AES, 256, label=self.config.key_label, store=True, template={
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                Attribute.WRAP: False, Attribute.UNWRAP: False, Attribute.SIGN: False,
                Attribute.VERIFY: False, Attribute.DERIVE: False,
            })
        self._run(operation, rw=True)

    def protection(self) -> dict[str, bool]:
        """The key's flags, for ``escrow status`` and the test that it cannot leave the HSM."""
        names = {"sensitive": Attribute.SENSITIVE, "extractable": Attribute.EXTRACTABLE,
                 "never_extractable": Attribute.NEVER_EXTRACTABLE, "always_sensitive": Attribute.ALWAYS_SENSITIVE,
                 "local": Attribute.LOCAL, "wrap": Attribute.WRAP, "unwrap": Attribute.UNWRAP}
        flags: dict[str, bool] = self._run(lambda pooled: {n: bool(self._key(pooled)[a]) for n, a in names.items()})
        return flags

    # --- sealing --------------------------------------------------------------------

    def seal(self, plaintext: bytes | bytearray, aad: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext with tag), encrypted inside the HSM."""
        nonce = os.urandom(_NONCE_BYTES)

        def operation(pooled: PooledSession) -> bytes:
            plain = bytes(plaintext)  # the library wants bytes: a copy, scrubbed after use
            try:
                return bytes(self._key(pooled).encrypt(plain, mechanism=Mechanism.AES_GCM,
                                                       mechanism_param=GCMParams(nonce, aad, 128)))
            finally:
                if plain is not plaintext:  # never the caller's own bytes object
                    scrub(plain)
        return nonce, self._run(operation)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytearray:
        """The plaintext, decrypted inside the HSM, as a buffer the caller wipes."""
        def operation(pooled: PooledSession) -> bytearray:
            try:
                plain = self._key(pooled).decrypt(ciphertext, mechanism=Mechanism.AES_GCM,
                                                  mechanism_param=GCMParams(nonce, aad, 128))
                buffer = bytearray(plain)
                scrub(plain)
                return buffer
            except (p11_exc.EncryptedDataInvalid, p11_exc.EncryptedDataLenRange, p11_exc.GeneralError) as exc:
                raise EscrowBlobRefused(f"{self.describe()} refused to open an escrowed key "
                                        f"({type(exc).__name__}): the record was changed") from None
        return self._run(operation)  # type: ignore[no-any-return]
