"""Checkpoints for a running instance: the audit key, the database, the outside copy.

:class:`AuditCheckpoints` is what the CLI and the worker use.  The worker
calls :meth:`~AuditCheckpoints.tick` every round and
:meth:`~AuditCheckpoints.at_shutdown` once; both only log failures, so an
HSM outage never stops workflows from being resumed.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import OpenXPKIError
from .checkpoint import Checkpoint, PublicKey, latest_checkpoint_time, write_checkpoint
from .config import CheckpointConfig
from .external import append_to_file, send_to_syslog
from .pending import chain_before_verify
from .verify import ChainReport, verify_chain

log = logging.getLogger(__name__)

#: The worker asks the database whether a checkpoint is due at most this often (seconds).
_LOCAL_CHECK_SECONDS = 30.0


class AuditCheckpoints:
    def __init__(self, db: Engine, config: CheckpointConfig, *, node: str | None = None) -> None:
        from ..crypto.keys import open_key_backend

        self.db = db
        self.config = config
        self.node = node or socket.gethostname()
        self.key_backend = open_key_backend(config.key)
        self._next_local_check = 0.0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.key_backend.close()

    # --- the audit key -------------------------------------------------------------

    def init_key(self) -> PublicKey:
        """Create the audit key in the token (never extractable); never overwrites one."""
        key = self.key_backend.generate_private_key(self.config.key.spec)
        return key.public_key()

    def public_key(self) -> PublicKey:
        return self.key_backend.load_private_key().public_key()

    # --- writing -------------------------------------------------------------------

    def write(self, *, only_if_moved: bool = False, now: datetime | None = None) -> Checkpoint | None:
        """Sign the head now: database first, then the copies outside it."""
        private_key = self.key_backend.load_private_key()
        with self._lock, self.db.begin() as conn:
            checkpoint = write_checkpoint(conn, private_key, node=self.node, now=now,
                                          only_if_moved=only_if_moved)
        if checkpoint is None:
            return None
        # After the commit: a copy of a checkpoint that was rolled back would
        # look like a deleted one.  A crash in between shows up in verify as
        # "missing in file", never as silence.
        if self.config.file is not None:
            append_to_file(self.config.file, checkpoint)
        if self.config.syslog:
            send_to_syslog(checkpoint)
        log.info("audit checkpoint %d: row %d, %d rows, hash %s", checkpoint.seq, checkpoint.row_id,
                 checkpoint.row_count, checkpoint.entry_hash[:16])
        return checkpoint

    def due(self, now: datetime | None = None) -> bool:
        """Whether the newest checkpoint (by any node) is older than the interval."""
        now = now or datetime.now(timezone.utc)
        with self.db.connect() as conn:
            last = latest_checkpoint_time(conn)
        return last is None or now - last >= timedelta(minutes=self.config.interval_minutes)

    # --- the worker's two hooks ------------------------------------------------------

    def tick(self) -> Checkpoint | None:
        """Every worker round: a checkpoint if one is due and the chain grew."""
        if time.monotonic() < self._next_local_check:
            return None
        self._next_local_check = time.monotonic() + _LOCAL_CHECK_SECONDS
        return self._quietly(lambda: self.write(only_if_moved=True) if self.due() else None)

    def at_shutdown(self) -> Checkpoint | None:
        """At a clean stop: anchor whatever was appended since the last checkpoint."""
        return self._quietly(lambda: self.write(only_if_moved=True))

    def _quietly(self, action: Any) -> Checkpoint | None:
        try:
            result: Checkpoint | None = action()
            return result
        except Exception as exc:  # noqa: BLE001 - a checkpoint failure (HSM, a bad queued row) never stops workflows
            log.error("audit checkpoint failed: %s", getattr(exc, "message", exc),
                      exc_info=not isinstance(exc, (OpenXPKIError, SQLAlchemyError)))
            return None

    # --- verifying -------------------------------------------------------------------

    def verify(self, *, public_key: PublicKey | None = None,
               extra_files: Sequence[Path] = ()) -> ChainReport:
        key = public_key if public_key is not None else self.public_key()
        files = [*([self.config.file] if self.config.file is not None else []), *extra_files]
        chained = chain_before_verify(self.db)
        # One snapshot for all reads (SERIALIZABLE is the one level all three databases offer).
        with self.db.connect().execution_options(isolation_level="SERIALIZABLE") as conn:
            report = verify_chain(conn, public_key=key, checkpoint_files=files, node=self.node,
                                  clock_tolerance=timedelta(seconds=self.config.clock_tolerance_seconds))
        report.warnings.extend(chained)
        return report
