"""Where the CA key lives: an HSM via PKCS#11, or (development) a file.

``open_key_backend(parse_key_config(reader))`` gives a :class:`KeyBackend`;
its ``load_private_key()`` returns a cryptography private key whose ``sign``
may run inside the HSM.  Modules: ``spec`` (key kinds), ``base`` (the
interface), ``config``, ``software``, and for PKCS#11 ``pkcs11_module``
(loading, threads, fork), ``pkcs11_session`` (login and session pool),
``pkcs11_keys`` (the key objects), ``pkcs11_backend``.
"""

from __future__ import annotations

from openxpki_py_token.keyspec import KeySpec

from .base import CAPrivateKey, KeyBackend
from .config import KeyConfig, Pkcs11KeyConfig, SoftwareKeyConfig, open_key_backend, parse_key_config

__all__ = [
    "CAPrivateKey",
    "KeyBackend",
    "KeyConfig",
    "KeySpec",
    "Pkcs11KeyConfig",
    "SoftwareKeyConfig",
    "open_key_backend",
    "parse_key_config",
]
