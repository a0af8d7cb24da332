"""What lets a second run continue an interrupted one: the access token.

An enrollment code works once.  If the agent is interrupted (Ctrl-C, the PC
sleeps, the network drops) the user runs the same command again; the saved
access token, still valid for a few minutes, lets it go on where the server
says it stopped.  Only the server knows the progress, so that is all this
file holds: server, workflow, the bearer token and its expiry.

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

    def is_valid(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.expires_at - _EXPIRY_MARGIN


class StateStore:
    """One JSON file per (server, enrollment code) under the state folder."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = (directory or DEFAULT_STATE_DIR).expanduser()

    def path_for(self, server: str, code: str) -> Path:
        digest = hashlib.sha256(f"{server}\n{code.strip()}".encode()).hexdigest()
        return self.directory / f"enrollment-{digest[:32]}.json"

    def load(self, server: str, code: str) -> EnrollmentSession | None:
        """The saved session, or None (missing, unreadable or not ours: start afresh)."""
        path = self.path_for(server, code)
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
                saved = EnrollmentSession(
                    server=str(data["server"]), workflow_id=int(data["workflow_id"]),
                    user=str(data["user"]), access_token=str(data["access_token"]),
                    expires_at=float(data["expires_at"]))
            except (ValueError, KeyError, TypeError):
                return None
        return saved if saved.server == server else None

    def save(self, code: str, session: EnrollmentSession) -> Path:
        self._make_directory()
        path = self.path_for(session.server, code)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(asdict(session), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return path

    def forget(self, server: str, code: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(server, code).unlink()

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
