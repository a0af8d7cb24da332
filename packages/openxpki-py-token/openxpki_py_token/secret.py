"""Where a secret (a PIN, a password) is read from: a file or an environment variable.

Never the value itself: configuration, command lines and logs name only
where the secret lives, and ``repr``/``str`` never show it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class SecretRef:
    """Where a secret (PIN, password) lives; ``repr`` never shows the value."""

    key: str
    file: Path | None = None
    env: str | None = None

    def reveal(self) -> str:
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(f"{self.key}: cannot read secret file {self.file}: {exc.strerror}") from exc
        assert self.env is not None
        value = os.environ.get(self.env)
        if value is None:
            raise ConfigError(f"{self.key}: environment variable {self.env} is not set")
        return value

    def __str__(self) -> str:
        return f"<secret from {self.file or '$' + str(self.env)}>"
