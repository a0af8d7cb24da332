"""External role handlers (OpenXPKI's "External Static").

A handler is a command the administrator configured for one role.  It runs
with an argv list (never a shell), a clean environment that carries only
the user, the role and the configured SSO attributes, no stdin, and a
timeout.  Exit status 0 grants the role; anything else — another status, a
signal, a timeout, a missing program — refuses it.  What the command wrote
to stderr is kept for the log and the audit trail, never shown to the user.

A role configured with ``groups`` is decided by the user's SSO groups (the
``groups`` attribute the SSO module set) before any command: a member of
none of them is refused; with no command, membership alone grants it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass

from .config import RoleHandler
from .identity import Identity

log = logging.getLogger(__name__)

# A fixed, minimal PATH: the handler must not inherit the web server's.
HANDLER_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_STDERR = 4096


@dataclass(frozen=True)
class HandlerOutcome:
    """What a handler run decided, and why (for the log and the audit row)."""

    role: str
    granted: bool
    reason: str  # "exit 0", "exit 1", "signal 9", "timeout after 5s", "cannot run: …"
    exit_code: int | None = None
    stderr: str = ""
    seconds: float = 0.0

    def audit_details(self) -> dict[str, object]:
        details: dict[str, object] = {"reason": self.reason, "seconds": round(self.seconds, 3)}
        if self.exit_code is not None:
            details["exit_code"] = self.exit_code
        if self.stderr:
            details["stderr"] = self.stderr
        return details


def handler_environment(handler: RoleHandler, identity: Identity) -> dict[str, str]:
    """The complete environment the command sees."""
    env = {"PATH": HANDLER_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    env.update(handler.env)
    for name, value in identity.attributes.items():
        env[f"OPENXPKI_SSO_{name.upper()}"] = value
    env["OPENXPKI_USER"] = identity.login
    env["OPENXPKI_ROLE"] = handler.role
    return env


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The command runs in its own session, so its children die with it and
    # cannot keep the stderr pipe (and this request) open.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stderr_text(data: bytes | None) -> str:
    if not data:
        return ""
    return data[:MAX_STDERR].decode("utf-8", "replace").strip()


def _group_decision(handler: RoleHandler, identity: Identity) -> tuple[bool, str]:
    assert handler.groups is not None
    shared = sorted(handler.groups & identity.groups)
    if shared:
        return True, f"SSO group {shared[0]}"
    return False, "in none of the SSO groups " + ", ".join(sorted(handler.groups))


def run_role_handler(handler: RoleHandler, identity: Identity) -> HandlerOutcome:
    """Decide ``handler``'s role for ``identity``; never raises for a refusing or broken command."""
    started = time.monotonic()
    group_reason = ""
    if handler.groups is not None:
        member, group_reason = _group_decision(handler, identity)
        if not member or handler.command is None:
            level = logging.INFO if member else logging.WARNING
            log.log(level, "role %s for %r: %s", handler.role, identity.login, group_reason)
            return HandlerOutcome(handler.role, member, group_reason, seconds=time.monotonic() - started)
    assert handler.command is not None
    outcome = _run_command(handler, handler.command, identity, started)
    if group_reason:
        return HandlerOutcome(outcome.role, outcome.granted, f"{group_reason}; {outcome.reason}",
                              outcome.exit_code, outcome.stderr, outcome.seconds)
    return outcome


def _run_command(handler: RoleHandler, command: tuple[str, ...], identity: Identity,
                 started: float) -> HandlerOutcome:

    def outcome(granted: bool, reason: str, exit_code: int | None = None,
                stderr: bytes | None = None) -> HandlerOutcome:
        result = HandlerOutcome(handler.role, granted, reason, exit_code, _stderr_text(stderr),
                                time.monotonic() - started)
        level = logging.INFO if granted else logging.WARNING
        log.log(level, "role handler %s for %r: %s%s", handler.role, identity.login, reason,
                f"; stderr: {result.stderr!r}" if result.stderr else "")
        return result

    try:
        proc = subprocess.Popen(
            list(command),
            shell=False,
            env=handler_environment(handler, identity),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,
            cwd="/",
        )
    except OSError as exc:
        return outcome(False, f"cannot run {command[0]}: {exc.strerror or exc}")
    try:
        _, stderr = proc.communicate(timeout=handler.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            _, stderr = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # a grandchild escaped the group and holds the pipe
            stderr = b""
            proc.kill()
            proc.wait()
        return outcome(False, f"timeout after {handler.timeout:g}s", None, stderr)
    finally:
        if proc.returncode is None:  # interrupted by something else: leave nothing running
            _kill_group(proc)
            proc.wait()
    if proc.returncode < 0:
        return outcome(False, f"signal {-proc.returncode}", None, stderr)
    if proc.returncode != 0:
        return outcome(False, f"exit {proc.returncode}", proc.returncode, stderr)
    return outcome(True, "exit 0", 0, stderr)
