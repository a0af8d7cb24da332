"""The optional ``audit`` config section: who signs checkpoints, how often, where they go.

```yaml
audit:
  checkpoint:
    key:                       # parsed like ca.key; must not be the CA key
      backend: pkcs11
      algorithm: ec-p256
      module: /usr/lib/softhsm/libsofthsm2.so
      token_label: openxpki-ca
      key_label: audit-checkpoint
      pin_file: ca-token.pin
    interval_minutes: 60       # the worker signs the head this often (and at SIGTERM)
    file: /var/log/openxpki-py/audit-checkpoints.log
    syslog: false              # also send each checkpoint to syslog (LOG_AUTHPRIV)
    clock_tolerance_seconds: 60
```
Without ``audit.checkpoint`` the chain is still written and ``audit verify``
checks it, but nothing outside the database anchors it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..configreader import Reader
from ..errors import ConfigError


@dataclass(frozen=True)
class CheckpointConfig:
    key: Any  # crypto.keys.KeyConfig
    interval_minutes: int
    file: Path | None
    syslog: bool
    #: How far apart the clocks of app nodes and workers may be (see verify.py's backdating check).
    clock_tolerance_seconds: int


@dataclass(frozen=True)
class AuditConfig:
    checkpoint: CheckpointConfig | None


def parse_audit_config(r: Reader, ca_key: Any) -> AuditConfig:
    """Read ``audit``; ``ca_key`` is the CA's KeyConfig, which the audit key must not be."""
    checkpoint = None
    if r.has("checkpoint"):
        checkpoint = _parse_checkpoint(r.section("checkpoint"), ca_key)
    else:
        r.raw("checkpoint", None)  # mark as read
    r.finish()
    return AuditConfig(checkpoint=checkpoint)


def _parse_checkpoint(r: Reader, ca_key: Any) -> CheckpointConfig:
    from ..crypto.keys.config import parse_key_config

    key = parse_key_config(r.section("key", required=True))
    if _same_key(key, ca_key):
        raise ConfigError(f"{r.key_path('key')}: names the CA key ({ca_key.origin}); give the audit "
                          "checkpoints their own key (another key_label or token)")
    cfg = CheckpointConfig(
        key=key,
        interval_minutes=r.int("interval_minutes", 60, minimum=1),
        file=r.filepath("file", None),
        syslog=r.bool("syslog", False),
        clock_tolerance_seconds=r.int("clock_tolerance_seconds", 60, minimum=0),
    )
    if cfg.file is None and not cfg.syslog:
        raise ConfigError(f"{r.key_path('file')}: required key is missing (checkpoints need a copy "
                          "outside the database: give file, or syslog: true)")
    r.finish()
    return cfg


def _same_key(a: Any, b: Any) -> bool:
    """Whether two KeyConfigs reach the same private key."""
    if a.backend != b.backend:
        return False
    if a.backend == "software":
        return bool(Path(a.path).resolve() == Path(b.path).resolve())
    same_place = (Path(a.module).resolve(), a.token_label, a.key_label) == (
        Path(b.module).resolve(), b.token_label, b.key_label)
    # Same label, different CKA_IDs: two keys.  Any id left out could match either.
    return same_place and (a.key_id is None or b.key_id is None or a.key_id == b.key_id)
