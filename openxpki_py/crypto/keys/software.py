"""The CA key in an encrypted PKCS#8 PEM file — for development only.

Every time such a key is opened a WARNING is logged, so a software CA key
in production shows up in every log review.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from openxpki_py_token.keyspec import KeySpec
from openxpki_py_token.secret import SecretRef

from ...errors import ConfigError, TokenError, TokenKeyNotFound, TokenPinError
from .base import CAPrivateKey, KeyBackend

log = logging.getLogger("openxpki_py.crypto.keys")

_ENCRYPTED_PKCS8 = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


class SoftwareKeyBackend(KeyBackend):
    """A private key in a password-protected file; no HSM protection at all."""

    def __init__(self, *, path: Path | str, password: SecretRef, spec: KeySpec | None = None,
                 origin: str = "ca.key") -> None:
        self.path = Path(path)
        self.password = password
        self.spec = spec
        self.origin = origin

    def describe(self) -> str:
        return f"software key file {self.path} (development only)"

    def close(self) -> None:
        """Nothing is held open."""

    def key_exists(self) -> bool:
        return self.path.exists()

    def _warn(self) -> None:
        log.warning("software CA key %s opened: development only, the private key is in a file "
                    "and not an HSM; use ca.key.backend: pkcs11 in production", self.path)

    def _password(self) -> bytes:
        value = self.password.reveal().encode("utf-8")
        if not value:
            raise TokenPinError(f"{self.password.key}: the software key password is empty")
        return value

    def load_private_key(self) -> CAPrivateKey:
        self._warn()
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise TokenKeyNotFound(f"software CA key file {self.path} does not exist; check "
                                   f"{self.origin}.path or create the key with 'openxpki-py ca init'") from None
        except OSError as exc:
            raise TokenError(f"cannot read software CA key file {self.path}: {exc.strerror}") from None
        if _ENCRYPTED_PKCS8 not in data:
            raise TokenError(f"{self.path} is not an encrypted PKCS#8 PEM key ('{_ENCRYPTED_PKCS8.decode()}'); "
                             "a CA key file must be password protected")
        try:
            key = serialization.load_pem_private_key(data, password=self._password())
        except ValueError:
            # cryptography says "Bad decrypt. Incorrect password?" (or a parse error for a damaged file).
            raise TokenPinError(f"cannot decrypt software CA key {self.path}: wrong password "
                                f"(read from {self.password.key}) or damaged file") from None
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise TokenError(f"{self.path} holds a {type(key).__name__}; the CA needs an RSA or EC key")
        try:
            actual = KeySpec.of(key)
        except ValueError as exc:
            raise TokenError(f"{self.path}: {exc}") from None
        if self.spec is not None and actual != self.spec:
            raise ConfigError(f"{self.origin}.algorithm: says {self.spec}, but {self.path} holds {actual}")
        return key

    def generate_private_key(self, spec: KeySpec) -> CAPrivateKey:
        if self.spec is not None and spec != self.spec:
            raise ConfigError(f"{self.origin}.algorithm: says {self.spec}; refusing to generate a {spec} key")
        self._warn()
        password = self._password()
        key: CAPrivateKey
        if spec.algorithm == "rsa":
            assert spec.rsa_bits is not None
            key = rsa.generate_private_key(public_exponent=65537, key_size=spec.rsa_bits)
        else:
            key = ec.generate_private_key(spec.ec_curve())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(password))
        try:
            # O_EXCL: refuses an existing file atomically, even if two run at once.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise TokenError(f"software CA key file {self.path} already exists; an existing CA key "
                             "is never overwritten", code="token.key_exists") from None
        except OSError as exc:
            raise TokenError(f"cannot create software CA key file {self.path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # the umask could only narrow it; make it exact
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        return key
