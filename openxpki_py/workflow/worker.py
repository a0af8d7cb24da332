"""``openxpki-py worker``: resume what is due, on any number of machines.

A worker owns nothing in memory: each round it claims due workflows in
the database (woken parents, retries whose time has come, workflows whose
runner died and whose lease ran out) and runs them as far as they go.
SIGTERM/SIGINT finish the step in progress, hand back unstarted claims
and stop; systemd's stop then never leaves half an action behind.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from ..audit.pending import chain_queued, chain_quietly
from ..errors import OpenXPKIError
from .engine import WorkflowEngine

log = logging.getLogger(__name__)


class AuditCheckpointHook(Protocol):
    """What the worker needs of :class:`openxpki_py.audit.service.AuditCheckpoints`."""

    def tick(self) -> object: ...

    def at_shutdown(self) -> object: ...


class StopRequest:
    """A stop that a signal handler may ask for: a flag and one byte down a pipe, no lock.

    ``threading.Event`` cannot be that: ``Event.wait`` holds the event's lock
    around its timed wait, and a handler runs on the main thread.  A SIGTERM
    that arrived while the loop held that lock made ``Event.set`` wait for
    its own thread, for ever: the worker ignored every later signal until
    killed (found by CI, 1 run in a few hundred).  Here the handler sets a
    flag and writes a byte; the wait is a ``poll`` on the pipe, which the
    byte ends at once.  Any thread may ask too.
    """

    def __init__(self) -> None:
        self._requested = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._poll = select.poll()  # not select(): it refuses descriptors from 1024 on
        self._poll.register(self._wake_read, select.POLLIN)
        weakref.finalize(self, _close_all, self._wake_read, self._wake_write)

    def set(self) -> None:
        self._requested = True
        try:
            os.write(self._wake_write, b"!")
        except BlockingIOError:  # the pipe is full of earlier requests: the wait ends anyway
            pass

    def is_set(self) -> bool:
        return self._requested

    def wait(self, timeout: float) -> bool:
        """Sleep until asked to stop or ``timeout`` seconds passed; whether a stop was asked for."""
        if not self._requested:
            self._poll.poll(timeout * 1000)
        return self._requested


def _close_all(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class Worker:
    def __init__(self, engine: WorkflowEngine, *, poll_interval: float | None = None,
                 batch_size: int | None = None, name: str | None = None,
                 housekeeping: Callable[[], object] | None = None, housekeeping_interval: float = 300.0,
                 audit_checkpoints: AuditCheckpointHook | None = None) -> None:
        self.engine = engine
        # Signed audit checkpoints (openxpki_py/audit/service.py): one call per
        # round (it keeps its own interval and never raises) and one at stop.
        self.audit_checkpoints = audit_checkpoints
        # Deleting expired sessions, codes, credentials: not workflow work,
        # but the worker is the one process that runs all the time.
        self.housekeeping = housekeeping
        self.housekeeping_interval = housekeeping_interval
        self._next_housekeeping = 0.0
        self.poll_interval = poll_interval if poll_interval is not None else engine.config.poll_interval
        self.batch_size = batch_size or engine.config.batch_size
        self.name = name or f"worker@{socket.gethostname()}"
        self.stopping = StopRequest()

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        self.stopping.set()  # first: logging from a handler can fail (a stream the main thread is writing)
        if signum is not None:
            log.info("%s: signal %s, stopping after the current step", self.name, signal.Signals(signum).name)

    def run_once(self) -> int:
        """One round: claim up to a batch of due workflows and run them; return the count."""
        try:
            if self.housekeeping is not None and time.monotonic() >= self._next_housekeeping:
                self._next_housekeeping = time.monotonic() + self.housekeeping_interval
                self.housekeeping()
            if self.audit_checkpoints is not None:
                self.audit_checkpoints.tick()
            claimed = self.engine.resume_due(limit=self.batch_size, actor=self.name,
                                             should_stop=self.stopping.is_set)
        finally:
            chain_queued()  # what this round audited, committed step by step
        # Audit rows some process committed but did not chain (it died in between): the
        # worker is the one process that always runs.  A look without the lock when idle.
        chain_quietly(self.engine.db, only_if_any=True)
        return claimed

    def run(self, *, handle_signals: bool = True) -> None:
        """Loop until stopped.  A database outage is waited out, not fatal."""
        if handle_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        log.info("%s: started (poll every %.1fs, batch %d)", self.name, self.poll_interval, self.batch_size)
        while not self.stopping.is_set():
            try:
                claimed = self.run_once()
            except (SQLAlchemyError, OpenXPKIError) as exc:
                log.warning("%s: round failed, trying again: %s", self.name, exc)
                claimed = 0
            if claimed < self.batch_size:  # a full batch suggests more are due: go on at once
                self.stopping.wait(self.poll_interval)
        if self.audit_checkpoints is not None:
            self.audit_checkpoints.at_shutdown()
        log.info("%s: stopped", self.name)
