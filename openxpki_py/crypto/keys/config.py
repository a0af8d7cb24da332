"""The ``ca.key`` config section and opening the backend it names.

```yaml
key:
  backend: pkcs11            # or: software (development only)
  algorithm: rsa-2048        # rsa-2048|rsa-3072|rsa-4096|ec-p256|ec-p384
  module: /usr/lib/softhsm/libsofthsm2.so
  token_label: openxpki-ca
  key_label: ca-signing
  key_id: "01"               # optional, hex
  pin_file: ca-token.pin     # or pin_env: OPENXPKI_CA_PIN
  timeout: 10                # seconds a request waits for one call into the token (key generation: 20x; 0: no bound)
  # software: path: ca-key.pem, password_file / password_env
```
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from openxpki_py_token.keyspec import KeySpec
from openxpki_py_token.secret import SecretRef

from ...configreader import Reader
from .base import KeyBackend


@dataclass(frozen=True)
class KeyConfig:
    """What both backends share; see the subclasses."""

    backend: str  # "pkcs11" | "software"
    algorithm: str  # canonical KeySpec name, e.g. "rsa-2048"
    origin: str  # the config path, for messages: "ca.key"

    @property
    def spec(self) -> KeySpec:
        return KeySpec.parse(self.algorithm)


@dataclass(frozen=True)
class Pkcs11KeyConfig(KeyConfig):
    module: Path
    token_label: str
    key_label: str
    key_id: bytes | None
    pin: SecretRef
    timeout: float | None  # None: the session pool's own bound (TokenSessionPool.call_seconds)


@dataclass(frozen=True)
class SoftwareKeyConfig(KeyConfig):
    path: Path
    password: SecretRef


def parse_key_config(reader: Reader) -> KeyConfig:
    """Read ``ca.key``; every error names the key to fix."""
    backend = reader.choice("backend", ("pkcs11", "software"))
    try:
        spec = KeySpec.parse(reader.str("algorithm"))
    except ValueError as exc:
        raise reader.error("algorithm", "one of rsa-2048, rsa-3072, rsa-4096, ec-p256, ec-p384") from exc
    cfg: KeyConfig
    if backend == "pkcs11":
        cfg = Pkcs11KeyConfig(
            backend=backend, algorithm=spec.name, origin=reader.path,
            module=reader.filepath("module"),
            token_label=_label(reader, "token_label"),
            key_label=_label(reader, "key_label"),
            key_id=_key_id(reader),
            pin=reader.secret("pin"),
            timeout=_seconds(reader.int("timeout", None, minimum=0, maximum=3600)),
        )
    else:
        cfg = SoftwareKeyConfig(
            backend=backend, algorithm=spec.name, origin=reader.path,
            path=reader.filepath("path"),
            password=reader.secret("password"),
        )
    reader.finish()
    return cfg


def _seconds(value: int | None) -> float | None:
    return None if value is None else float(value)


def _label(reader: Reader, key: str) -> str:
    value: str = reader.str(key)
    # CK_TOKEN_INFO.label is 32 bytes, blank padded.
    if key == "token_label" and len(value.encode("utf-8")) > 32:
        raise reader.error(key, "a token label of at most 32 bytes")
    return value


def _key_id(reader: Reader) -> bytes | None:
    if not reader.has("key_id"):
        reader.raw("key_id", None)  # mark as read
        return None
    value = reader.raw("key_id")
    if not isinstance(value, str) or not value or len(value) % 2 or not all(
            c in string.hexdigits for c in value):
        raise reader.error("key_id", 'a quoted hex string with an even number of digits, e.g. "01"')
    return bytes.fromhex(value)


def open_key_backend(cfg: KeyConfig) -> KeyBackend:
    """The backend ``cfg`` names; nothing is opened until the key is first used."""
    if isinstance(cfg, Pkcs11KeyConfig):
        from .pkcs11_backend import Pkcs11KeyBackend

        return Pkcs11KeyBackend(module=cfg.module, token_label=cfg.token_label, key_label=cfg.key_label,
                                key_id=cfg.key_id, pin=cfg.pin, spec=cfg.spec, origin=cfg.origin,
                                call_seconds=cfg.timeout)
    if isinstance(cfg, SoftwareKeyConfig):
        from .software import SoftwareKeyBackend

        return SoftwareKeyBackend(path=cfg.path, password=cfg.password, spec=cfg.spec, origin=cfg.origin)
    raise TypeError(f"unknown key config {type(cfg).__name__}")
