"""External role handlers: argv without shell, clean environment, timeout, refusal."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from openxpki_py.auth.config import RoleHandler
from openxpki_py.auth.handlers import handler_environment, run_role_handler
from openxpki_py.auth.identity import Identity

DATA = Path(__file__).resolve().parent.parent / "data" / "auth"
BOB = Identity("bob", {"display_name": "Bob Builder"})


def handler(*argv: str | Path, timeout: float = 5.0, env: dict[str, str] | None = None) -> RoleHandler:
    return RoleHandler(role="RA Operator", command=tuple(str(a) for a in argv), timeout=timeout, env=env or {})


def test_exit_zero_grants() -> None:
    outcome = run_role_handler(handler("/bin/true"), BOB)
    assert outcome.granted and outcome.reason == "exit 0" and outcome.exit_code == 0


def test_non_zero_exit_refuses_and_keeps_stderr_for_the_log() -> None:
    outcome = run_role_handler(handler(DATA / "grant-bob"), Identity("alice"))
    assert not outcome.granted and outcome.exit_code == 1
    assert outcome.stderr == "check: alice is not in the group for RA Operator"
    assert outcome.audit_details()["stderr"] == outcome.stderr
    assert run_role_handler(handler(DATA / "grant-bob"), BOB).granted


def test_missing_command_refuses(tmp_path: Path) -> None:
    outcome = run_role_handler(handler(tmp_path / "no-such-script"), BOB)
    assert not outcome.granted and "cannot run" in outcome.reason


def test_not_executable_refuses(tmp_path: Path) -> None:
    script = tmp_path / "plain"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    assert not run_role_handler(handler(script), BOB).granted


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent is gone, init reaps it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_timeout_refuses_and_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    outcome = run_role_handler(handler(DATA / "slow", pidfile, timeout=0.5), BOB)
    assert time.monotonic() - started < 5
    assert not outcome.granted and outcome.reason == "timeout after 0.5s"
    child = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(child):
            break
        time.sleep(0.02)
    assert not _alive(child), "the handler's child outlived the timeout"


def test_shell_metacharacters_are_plain_arguments(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    tricky = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", f"| touch {marker}", "*"]
    outcome = run_role_handler(handler(DATA / "dump-env", out, *tricky), BOB)
    assert outcome.granted
    assert not marker.exists()
    assert (tmp_path / "run.args").read_text().splitlines() == tricky


def test_refusing_command_with_metacharacters_runs_nothing_else(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    outcome = run_role_handler(handler("/bin/false", f"&& touch {marker}", f"|| touch {marker}"), BOB)
    assert not outcome.granted and outcome.exit_code == 1
    assert not marker.exists()


def test_login_with_metacharacters_reaches_the_script_as_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    outcome = run_role_handler(handler(DATA / "grant-bob"), Identity(f"bob; touch {marker}"))
    assert not outcome.granted and not marker.exists()


def test_clean_environment_and_no_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_PASSWORD", "secret")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    out = tmp_path / "run"
    outcome = run_role_handler(handler(DATA / "dump-env", out, env={"LDAP_URI": "ldap://127.0.0.1:1"}), BOB)
    assert outcome.granted
    env = dict(line.split("=", 1) for line in (tmp_path / "run.env").read_text().splitlines())
    env.pop("PWD", None)  # set by the shell itself
    env.pop("SHLVL", None)
    env.pop("_", None)
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "OPENXPKI_USER": "bob", "OPENXPKI_ROLE": "RA Operator",
        "OPENXPKI_SSO_DISPLAY_NAME": "Bob Builder", "LDAP_URI": "ldap://127.0.0.1:1",
    }
    assert (tmp_path / "run.stdin").read_text() == ""


def test_configured_env_cannot_override_user_or_role() -> None:
    env = handler_environment(handler("/bin/true", env={"PATH": "/tmp"}), BOB)
    assert env["OPENXPKI_USER"] == "bob" and env["OPENXPKI_ROLE"] == "RA Operator"
    assert env["PATH"] == "/tmp"  # the administrator may choose PATH; users and roles they may not


def test_sso_groups_decide_a_role_without_a_command() -> None:
    ra = RoleHandler(role="RA Operator", command=None, groups=frozenset({"pki-ra", "pki-admins"}))
    member = run_role_handler(ra, Identity("bob", groups=frozenset({"staff", "pki-ra"})))
    assert member.granted and member.reason == "SSO group pki-ra" and member.exit_code is None
    other = run_role_handler(ra, Identity("alice", groups=frozenset({"staff"})))
    assert not other.granted and other.reason == "in none of the SSO groups pki-admins, pki-ra"


def test_sso_groups_and_a_command_must_both_agree(tmp_path: Path) -> None:
    both = RoleHandler(role="RA Operator", command=(str(DATA / "grant-bob"),), groups=frozenset({"pki-ra"}))
    assert run_role_handler(both, Identity("bob", groups=frozenset({"pki-ra"}))).granted
    refused = run_role_handler(both, Identity("alice", groups=frozenset({"pki-ra"})))
    assert not refused.granted and refused.reason == "SSO group pki-ra; exit 1"
    # Not a member: the command is not even run.
    marker = tmp_path / "ran"
    touch = RoleHandler(role="RA Operator", command=("/usr/bin/touch", str(marker)), groups=frozenset({"pki-ra"}))
    assert not run_role_handler(touch, Identity("bob")).granted and not marker.exists()


def test_groups_reach_the_handler_as_the_sso_set_them() -> None:
    ident = Identity("bob", {"groups": "pki-ra;staff", "mail": "bob@example.com"}, frozenset({"pki-ra", "staff"}))
    env = handler_environment(handler("/bin/true"), ident)
    assert env["OPENXPKI_SSO_GROUPS"] == "pki-ra;staff" and env["OPENXPKI_SSO_MAIL"] == "bob@example.com"
