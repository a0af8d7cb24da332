"""The seam between the CA and wherever its private key lives.

A backend hands out a *cryptography* private key object.  For an HSM that
object's ``sign`` runs inside the token, so ``x509.CertificateBuilder.sign``
and friends work unchanged and the CA code never knows where the key is.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self, Union

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from openxpki_py_token.keyspec import KeySpec

#: What every backend returns: usable directly with the x509 builders' ``sign``.
CAPrivateKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]


class KeyBackend(abc.ABC):
    """Where the CA key lives: an HSM via PKCS#11, or (development) a file."""

    @abc.abstractmethod
    def load_private_key(self) -> CAPrivateKey:
        """The existing CA key; raises a ``TokenError`` naming what to fix."""

    @abc.abstractmethod
    def generate_private_key(self, spec: KeySpec) -> CAPrivateKey:
        """Create the CA key (inside the token for an HSM); never overwrites one."""

    @abc.abstractmethod
    def key_exists(self) -> bool:
        """Whether the configured key is already there."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for logs and audit: where the key is, never a secret."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release sessions / handles; the backend may be opened again lazily."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"
