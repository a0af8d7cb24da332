"""The copy of each checkpoint outside the database: an append-only file and/or syslog.

Someone who controls the database can delete checkpoint rows, but not the
lines this node already wrote to its file or sent to a log server.  Each
node writes its own file (a checkpoint names its node), so ``verify`` expects
in a file only the checkpoints of the node that wrote it.  Make the file
append-only for root too (``chattr +a``) and ship syslog off the machine:
that is what turns "outside the database" into "outside the attacker's reach".
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import StorageError
from .checkpoint import Checkpoint

log = logging.getLogger(__name__)

#: Records go here when ``audit.checkpoint.syslog`` is on; one JSON line per checkpoint.
SYSLOG_LOGGER = "openxpki_py.audit.checkpoint"


def append_to_file(path: Path, checkpoint: Checkpoint) -> None:
    """Append one line with a single write (O_APPEND) and make it durable."""
    line = (checkpoint.to_line() + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"checkpoint {checkpoint.seq} is in the database but could not be appended to "
                           f"{path} (audit.checkpoint.file): {exc.strerror}") from exc


def send_to_syslog(checkpoint: Checkpoint) -> None:
    logger = logging.getLogger(SYSLOG_LOGGER)
    if not logger.handlers and Path("/dev/log").exists():
        handler = logging.handlers.SysLogHandler(address="/dev/log",
                                                 facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
        handler.setFormatter(logging.Formatter("openxpki-py-audit: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logger.info("%s", checkpoint.to_line())


@dataclass(frozen=True)
class BadLine:
    """A line of a checkpoint file that is not a checkpoint record."""

    path: Path
    line_no: int
    reason: str


def read_file(path: Path) -> tuple[list[Checkpoint], list[BadLine]]:
    """The checkpoints in one file (a copy of syslog works too); a missing file holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise StorageError(f"cannot read checkpoint file {path}: {exc.strerror}") from exc
    found: list[Checkpoint] = []
    bad: list[BadLine] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            found.append(Checkpoint.from_line(line))
        except ValueError as exc:
            bad.append(BadLine(path, number, str(exc)))
    return found, bad
