"""The optional ``escrow`` config section: the key-recovery key in the HSM that wraps escrowed keys.

```yaml
escrow:
  key:                       # an AES-256 key in the HSM, never extractable (openxpki-py escrow init-key)
    module: /usr/lib/softhsm/libsofthsm2.so
    token_label: openxpki-ca
    key_label: ca-signing-escrow
    pin_file: ca-token.pin
  history_keys: 3            # a new card also gets the owner's previous N escrowed keys of the type
```

Without the section, and with the CA key in an HSM, the escrow key lives on
the CA's token under the CA key's label plus ``-escrow`` (same module, PIN).
A certificate type with ``key_origin: escrowed`` needs one or the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openxpki_py_token.secret import SecretRef

from ..configreader import Reader
from ..errors import ConfigError


@dataclass(frozen=True)
class EscrowKeyConfig:
    module: Path
    token_label: str
    key_label: str
    pin: SecretRef
    origin: str  # the config path, for messages

    def describe(self) -> str:
        return f"AES key {self.key_label!r} on token {self.token_label!r} via {self.module}"


@dataclass(frozen=True)
class EscrowConfig:
    key: EscrowKeyConfig | None  # None: no escrow key configured or derivable
    # How many of the owner's earlier escrowed keys of a type a new card receives
    # next to the new one (key history: old mail still opens after a lost card).
    history_keys: int = 3


def parse_escrow_config(r: Reader, ca_key: Any, personalization: Any) -> EscrowConfig:
    """Read ``escrow``; ``ca_key`` (a KeyConfig) supplies the defaults, ``personalization`` the need."""
    key: EscrowKeyConfig | None = None
    if r.has("key"):
        k = r.section("key")
        key = EscrowKeyConfig(module=k.filepath("module"), token_label=k.str("token_label"),
                              key_label=k.str("key_label"), pin=k.secret("pin"), origin=k.path)
        k.finish()
        if ca_key is not None and getattr(ca_key, "key_label", None) == key.key_label and \
                getattr(ca_key, "token_label", None) == key.token_label:
            raise ConfigError(f"{r.key_path('key')}.key_label: names the CA key; the escrow key is a "
                              "separate AES key (e.g. the CA key's label plus -escrow)")
    else:
        r.raw("key", None)  # mark as read
        if getattr(ca_key, "backend", None) == "pkcs11":
            key = EscrowKeyConfig(module=ca_key.module, token_label=ca_key.token_label,
                                  key_label=f"{ca_key.key_label}-escrow", pin=ca_key.pin,
                                  origin=r.key_path("key"))
    history_keys = r.int("history_keys", EscrowConfig.history_keys, minimum=0, maximum=20)
    r.finish()
    escrowed = [t.name for t in personalization.certificates if t.key_origin == "escrowed"]
    if escrowed and key is None:
        raise ConfigError(f"{r.key_path('key')}: certificate types {', '.join(escrowed)} are escrowed "
                          "(key_origin: escrowed) but there is no escrow key: give escrow.key, or keep "
                          "the CA key in an HSM (then the escrow key defaults to its token)")
    return EscrowConfig(key=key, history_keys=history_keys)
