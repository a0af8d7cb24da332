"""What lets a second run continue an interrupted one: the access token, and
which keys on the card this personalization made.

An enrollment code works once.  If the agent is interrupted (Ctrl-C, the PC
sleeps, the network drops) the user runs the same command again; the saved
access token, still valid for a few minutes, lets it go on where the server
says it stopped.  Only the server knows the progress, so the session file
holds only server, workflow, the bearer token and its expiry.

The second file, :class:`CreatedKeys`, is the agent's own proof of which
keys it generated for this workflow on this card (by CKA_ID and public key).
The server's tasks name key IDs, and a server is not trusted to name only
its own: the agent reuses and installs certificates only for keys in this
record, so a key of another PKI on the same card is never touched.  It is
kept per workflow, not per code, because a rerun after a long approval
comes with a new code for the same workflow.

The token is a credential: the folder is 0700, the file 0600, written
atomically.  The enrollment code itself is not stored, only a hash that
tells a rerun with the same code from a new one; PINs never come near it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

DEFAULT_STATE_DIR = Path("~/.cache/openxpki-py-token")
# A token this close to its expiry is not worth trying: the next call would fail.
_EXPIRY_MARGIN = 30.0


@dataclass(frozen=True)
class EnrollmentSession:
    """The server's answer to ``POST /api/v1/enroll``, as saved between runs."""

    server: str
    workflow_id: int
    user: str
    access_token: str = field(repr=False)  # a credential: never in a log line
    expires_at: float = 0.0  # Unix time
    phrase: str = ""  # the pairing phrase, printed again by a rerun (not a secret: the page shows it)

    def is_valid(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires_at - _EXPIRY_MARGIN


@dataclass
class CreatedKeys:
    """The keys this workflow's runs generated on one card."""

    server: str
    workflow_id: int
    card_serial: str
    #: CKA_ID (hex) → SHA-256 (hex) of the key's SubjectPublicKeyInfo; "" when
    #: the ID was claimed but the run stopped before the key was read back.
    keys: dict[str, str] = field(default_factory=dict)

    def owns(self, key_id: bytes, spki: bytes) -> bool:
        """Whether the key with this ID and public key is one this workflow generated."""
        recorded = self.keys.get(key_id.hex())
        if recorded is None:
            return False
        return recorded in ("", hashlib.sha256(spki).hexdigest())

    def has(self, key_id: bytes) -> bool:
        return key_id.hex() in self.keys

    def claim(self, key_id: bytes) -> None:
        self.keys[key_id.hex()] = ""

    def record(self, key_id: bytes, spki: bytes) -> bool:
        """Note the key's public key; True if the record changed (and needs saving)."""
        digest = hashlib.sha256(spki).hexdigest()
        changed = self.keys.get(key_id.hex()) != digest
        self.keys[key_id.hex()] = digest
        return changed


class StateStore:
    """JSON files under the state folder: one per (server, enrollment code), one per workflow."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (directory or DEFAULT_STATE_DIR).expanduser()

    def path_for(self, server: str, code: str) -> Path:
        digest = hashlib.sha256(f"{server}\n{code.strip()}".encode()).hexdigest()
        return self.directory / f"enrollment-{digest[:32]}.json"

    def load(self, server: str, code: str) -> EnrollmentSession | None:
        """The saved session, or None (missing, unreadable or not ours: start afresh)."""
        data = self._read(self.path_for(server, code))
        if data is None:
            return None
        try:
            saved = EnrollmentSession(
                server=str(data["server"]), workflow_id=int(data["workflow_id"]),
                user=str(data["user"]), access_token=str(data["access_token"]),
                expires_at=float(data["expires_at"]), phrase=str(data.get("phrase", "")))
        except (ValueError, KeyError, TypeError):
            return None
        return saved if saved.server == server else None

    def save(self, code: str, session: EnrollmentSession) -> Path:
        return self._write(self.path_for(session.server, code), asdict(session))

    def forget(self, server: str, code: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(server, code).unlink()

    # --- the keys a workflow created -------------------------------------------------------

    def keys_path_for(self, server: str, workflow_id: int) -> Path:
        digest = hashlib.sha256(f"{server}\n{workflow_id}".encode()).hexdigest()
        return self.directory / f"created-keys-{digest[:32]}.json"

    def load_created_keys(self, server: str, workflow_id: int, card_serial: str) -> CreatedKeys:
        """The record for this workflow and card; empty if there is none (or it is for another card)."""
        data = self._read(self.keys_path_for(server, workflow_id))
        fresh = CreatedKeys(server=server, workflow_id=workflow_id, card_serial=card_serial)
        if data is None:
            return fresh
        try:
            keys = {str(k): str(v) for k, v in dict(data["keys"]).items()}
            same = (data["server"], int(data["workflow_id"]), data["card_serial"]) == (
                server, workflow_id, card_serial)
        except (ValueError, KeyError, TypeError):
            return fresh
        if not same:
            return fresh
        fresh.keys.update(keys)
        return fresh

    def save_created_keys(self, created: CreatedKeys) -> Path:
        return self._write(self.keys_path_for(created.server, created.workflow_id), asdict(created))

    def forget_created_keys(self, server: str, workflow_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.keys_path_for(server, workflow_id).unlink()

    # --- files -----------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "r", encoding="utf-8") as handle:
            info = os.fstat(handle.fileno())
            # Someone else's or a readable-by-others file is no proof of anything.
            if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                return None
            try:
                data = json.load(handle)
            except ValueError:
                return None
        return data if isinstance(data, dict) else None

    def _write(self, path: Path, data: dict[str, Any]) -> Path:
        """Atomically, mode 0600: a crash leaves the old file or the new one."""
        self._make_directory()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return path

    def _make_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = self.directory.lstat()
        except OSError as exc:
            raise UsageError(f"--state-dir {self.directory}: cannot create it ({exc.strerror})") from None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise UsageError(f"--state-dir {self.directory} is not a folder of yours")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            self.directory.chmod(0o700)  # it will hold a bearer token
