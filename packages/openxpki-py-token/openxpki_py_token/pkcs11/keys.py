"""HSM keys that look like cryptography private keys.

``Pkcs11RSAPrivateKey`` and ``Pkcs11ECPrivateKey`` subclass cryptography's
key ABCs, so ``CertificateBuilder.sign(key, …)`` (and the CRL and CSR
builders) call our ``sign``, which runs in the token.  Everything that would
need the private key material raises: it never leaves the HSM.

A key object holds no session: every ``sign`` borrows one from the token's
pool, so one key object serves many threads and survives forks and HSM
restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from pkcs11 import MGF, Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11_exc

from ..errors import TokenError, TokenKeyNotFound
from .session import SESSION_LOST, PooledSession, TokenSessionPool


@dataclass(frozen=True)
class TokenKeyRef:
    """Which key on the token: its label and, optionally, its CKA_ID."""

    label: str
    key_id: bytes | None = None

    def template(self, object_class: ObjectClass) -> dict[Attribute, Any]:
        attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class, Attribute.LABEL: self.label}
        if self.key_id is not None:
            attrs[Attribute.ID] = self.key_id
        return attrs

    def find(self, session: Any, object_class: ObjectClass) -> list[Any]:
        return list(session.get_objects(self.template(object_class)))

    def __str__(self) -> str:
        return f"{self.label!r}" + (f" (id {self.key_id.hex()})" if self.key_id is not None else "")


class TokenSigner:
    """Signs with one private key of one token, on whichever session is free."""

    def __init__(self, pool: TokenSessionPool, ref: TokenKeyRef, *, seconds: float | None = None) -> None:
        self.pool = pool
        self.ref = ref
        self.seconds = seconds  # the bound of one signature (None: the pool's)

    def describe(self) -> str:
        return f"key {self.ref} on {self.pool.describe()}"

    def _find(self, session: Any) -> Any:
        found = self.ref.find(session, ObjectClass.PRIVATE_KEY)
        if len(found) != 1:
            raise TokenKeyNotFound(f"{self.describe()}: the private key is gone from the token")
        return found[0]

    def sign(self, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        def operation(pooled: PooledSession) -> bytes:
            key = pooled.cached(self.ref, self._find)
            return bytes(key.sign(data, mechanism=mechanism, mechanism_param=param))

        try:
            return self.pool.run(operation, seconds=self.seconds)
        except SESSION_LOST:
            raise  # run() already turned a repeated loss into a TokenError
        except p11_exc.PKCS11Error as exc:
            raise TokenError(
                f"{self.describe()}: signing with {mechanism.name} failed ({type(exc).__name__})"
            ) from None


@dataclass(frozen=True)
class _RsaHash:
    digest: Mechanism
    mgf: MGF
    pkcs1: Mechanism  # hash-and-sign in the token, PKCS#1 v1.5
    pss: Mechanism  # hash-and-sign in the token, PSS
    digest_info: bytes  # DER prefix of DigestInfo for a pre-hashed PKCS#1 v1.5 signature


_RSA_HASHES = {
    "sha256": _RsaHash(Mechanism.SHA256, MGF.SHA256, Mechanism.SHA256_RSA_PKCS,
                       Mechanism.SHA256_RSA_PKCS_PSS,
                       bytes.fromhex("3031300d060960864801650304020105000420")),
    "sha384": _RsaHash(Mechanism.SHA384, MGF.SHA384, Mechanism.SHA384_RSA_PKCS,
                       Mechanism.SHA384_RSA_PKCS_PSS,
                       bytes.fromhex("3041300d060960864801650304020205000430")),
    "sha512": _RsaHash(Mechanism.SHA512, MGF.SHA512, Mechanism.SHA512_RSA_PKCS,
                       Mechanism.SHA512_RSA_PKCS_PSS,
                       bytes.fromhex("3051300d060960864801650304020305000440")),
}


def _hash_of(algorithm: object) -> tuple[hashes.HashAlgorithm, bool]:
    """(hash algorithm, already hashed?) from what cryptography passes to sign()."""
    if isinstance(algorithm, utils.Prehashed):
        return algorithm._algorithm, True  # noqa: SLF001 - no public accessor in cryptography
    if isinstance(algorithm, hashes.HashAlgorithm):
        return algorithm, False
    raise UnsupportedAlgorithm(f"HSM keys sign with a hash algorithm, not {type(algorithm).__name__}")


class _HsmKey:
    """What both key types share: no key material ever leaves the token."""

    _signer: TokenSigner

    def _refuse(self, what: str) -> NoReturn:
        raise TokenError(f"{self._signer.describe()} lives in the HSM and never leaves it: "
                         f"{what} is not possible", code="token.key_not_exportable")

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        self._refuse("private_bytes()")

    def private_numbers(self) -> Any:
        self._refuse("private_numbers()")

    # A copy is the same handle to the same HSM key: nothing is extracted, and
    # cryptography's own immutable keys copy the same way.
    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __reduce__(self) -> NoReturn:
        self._refuse("pickling")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._signer.describe()}>"


class Pkcs11RSAPrivateKey(_HsmKey, rsa.RSAPrivateKey):
    """An RSA key in a PKCS#11 token: PKCS#1 v1.5 and PSS signatures."""

    def __init__(self, signer: TokenSigner, public_key: rsa.RSAPublicKey) -> None:
        self._signer = signer
        self._public_key = public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    def decrypt(self, ciphertext: bytes, padding: padding.AsymmetricPadding) -> bytes:
        self._refuse("decrypt() (the CA key may only sign)")

    def sign(self, data: Any, padding: padding.AsymmetricPadding, algorithm: Any) -> bytes:
        data = bytes(data)
        if isinstance(algorithm, utils.NoDigestInfo):
            if not isinstance(padding, _PKCS1v15):
                raise UnsupportedAlgorithm("NoDigestInfo works only with PKCS#1 v1.5 padding")
            return self._signer.sign(data, Mechanism.RSA_PKCS)
        hash_algorithm, prehashed = _hash_of(algorithm)
        spec = _RSA_HASHES.get(hash_algorithm.name)
        if spec is None:
            raise UnsupportedAlgorithm(f"HSM RSA keys sign with SHA-256, SHA-384 or SHA-512, "
                                       f"not {hash_algorithm.name}")
        if prehashed and len(data) != hash_algorithm.digest_size:
            raise ValueError(f"a pre-hashed {hash_algorithm.name} digest has "
                             f"{hash_algorithm.digest_size} bytes, not {len(data)}")
        if isinstance(padding, _PKCS1v15):
            if prehashed:
                return self._signer.sign(spec.digest_info + data, Mechanism.RSA_PKCS)
            return self._signer.sign(data, spec.pkcs1)
        if isinstance(padding, _PSS):
            param = (spec.digest, self._mgf(padding, hash_algorithm), self._salt_length(padding, hash_algorithm))
            return self._signer.sign(data, Mechanism.RSA_PKCS_PSS if prehashed else spec.pss, param)
        raise UnsupportedAlgorithm(f"HSM RSA keys sign with PKCS1v15 or PSS padding, "
                                   f"not {type(padding).__name__}")

    @staticmethod
    def _mgf(pss: padding.PSS, hash_algorithm: hashes.HashAlgorithm) -> MGF:
        mgf = pss.mgf
        if not isinstance(mgf, _MGF1):
            raise UnsupportedAlgorithm("PSS needs MGF1")
        spec = _RSA_HASHES.get(mgf._algorithm.name)  # noqa: SLF001 - no public accessor
        if spec is None:
            raise UnsupportedAlgorithm(f"MGF1 with {mgf._algorithm.name} is not supported")  # noqa: SLF001
        return spec.mgf

    def _salt_length(self, pss: padding.PSS, hash_algorithm: hashes.HashAlgorithm) -> int:
        """The salt length cryptography asked for, as PKCS#11 needs it: a number."""
        salt = pss._salt_length  # noqa: SLF001 - no public accessor in cryptography
        # emLen - hLen - 2, with emLen = ceil((modBits - 1) / 8)  (RFC 8017 §9.1.1)
        maximum = (self.key_size + 6) // 8 - hash_algorithm.digest_size - 2
        if isinstance(salt, int):
            if not 0 <= salt <= maximum:
                raise ValueError(f"PSS salt length {salt} does not fit a {self.key_size}-bit key "
                                 f"with {hash_algorithm.name} (at most {maximum})")
            return salt
        if salt is _PSS.DIGEST_LENGTH:
            return hash_algorithm.digest_size
        if salt is _PSS.MAX_LENGTH:
            return maximum
        raise ValueError("PSS salt length AUTO is only for verifying; use DIGEST_LENGTH to sign")


class Pkcs11ECPrivateKey(_HsmKey, ec.EllipticCurvePrivateKey):
    """An EC key in a PKCS#11 token: ECDSA, hashed here, signed raw in the token.

    Hashing in software and using plain CKM_ECDSA works on every token
    (SoftHSM 2.6 has no CKM_ECDSA_SHA256) and sends only the digest.
    """

    def __init__(self, signer: TokenSigner, public_key: ec.EllipticCurvePublicKey) -> None:
        self._signer = signer
        self._public_key = public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.curve.key_size

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        self._refuse("exchange() (the CA key may only sign)")

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm(f"HSM EC keys sign with ECDSA, not {type(signature_algorithm).__name__}")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise UnsupportedAlgorithm("deterministic ECDSA (RFC 6979) is not available through PKCS#11")
        hash_algorithm, prehashed = _hash_of(signature_algorithm.algorithm)
        data = bytes(data)
        if prehashed:
            if len(data) != hash_algorithm.digest_size:
                raise ValueError(f"a pre-hashed {hash_algorithm.name} digest has "
                                 f"{hash_algorithm.digest_size} bytes, not {len(data)}")
            digest = data
        else:
            hasher = hashes.Hash(hash_algorithm)
            hasher.update(data)
            digest = hasher.finalize()
        raw = self._signer.sign(digest, Mechanism.ECDSA)
        size = (self.key_size + 7) // 8
        if len(raw) != 2 * size:
            raise TokenError(f"{self._signer.describe()}: ECDSA returned {len(raw)} bytes, "
                             f"expected r||s of {2 * size}")
        # PKCS#11 returns r||s; X.509 wants the DER SEQUENCE { r, s }.
        return utils.encode_dss_signature(int.from_bytes(raw[:size], "big"),
                                          int.from_bytes(raw[size:], "big"))


# Short names for isinstance checks (the parameter ``padding`` shadows the module).
_PKCS1v15 = padding.PKCS1v15
_PSS = padding.PSS
_MGF1 = padding.MGF1
