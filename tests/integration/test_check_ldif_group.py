"""contrib/auth/check-ldif-group on the demo's LDIF file, run as openxpki-py runs a role handler.

The handler gets an argv list and a clean environment (OPENXPKI_USER,
OPENXPKI_ROLE); exit status 0 grants the role, 1 refuses, 2 is a setup error.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from openxpki_py.auth.config import RoleHandler
from openxpki_py.auth.handlers import run_role_handler
from openxpki_py.auth.identity import Identity

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "contrib" / "auth" / "check-ldif-group"
DEMO_LDIF = REPO / "contrib" / "ldap" / "demo.ldif"
RA_GROUP = "cn=ra-operators,ou=groups,dc=example,dc=com"
CA_GROUP = "cn=ca-operators,ou=groups,dc=example,dc=com"


def run(user: str | None, group: str = RA_GROUP, ldif: Path = DEMO_LDIF) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "OPENXPKI_ROLE": "RA Operator"}
    if user is not None:
        env["OPENXPKI_USER"] = user
    return subprocess.run([str(SCRIPT), str(ldif), group], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.parametrize(("user", "group"), [("bob", RA_GROUP), ("carol", CA_GROUP)])
def test_member_is_granted(user: str, group: str) -> None:
    done = run(user, group)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize(("user", "group"), [
    ("alice", RA_GROUP), ("alice", CA_GROUP), ("carol", RA_GROUP), ("bob", CA_GROUP), ("dave", RA_GROUP),
    ("nobody", RA_GROUP),
    # Case variants of a member's login: the entry's own uid is compared, exactly.
    ("BOB", RA_GROUP), ("Bob", RA_GROUP), ("bob ", RA_GROUP), ("bob*", RA_GROUP),
])
def test_non_member_is_refused(user: str, group: str) -> None:
    done = run(user, group)
    assert done.returncode == 1, done.stderr
    assert f"{user} is not a member of {group}" in done.stderr


def test_group_dn_is_matched_without_regard_to_case_and_blanks() -> None:
    assert run("bob", "CN=RA-Operators, OU=groups, DC=example, DC=com").returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    ({"ldif": Path("/nonexistent/directory.ldif")}, "cannot read /nonexistent/directory.ldif: No such file"),
    ({"group": "cn=nope,ou=groups,dc=example,dc=com"}, "no group cn=nope,ou=groups,dc=example,dc=com in the file"),
])
def test_setup_errors_say_what_is_wrong(args: dict[str, object], message: str) -> None:
    done = run("bob", **args)  # type: ignore[arg-type]
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_no_login_and_bad_usage_are_setup_errors() -> None:
    assert run(None).returncode == 2 and "OPENXPKI_USER is not set" in run(None).stderr
    done = subprocess.run([str(SCRIPT), str(DEMO_LDIF)], env={"OPENXPKI_USER": "bob"}, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 2 and "usage: check-ldif-group LDIF-FILE GROUP-DN" in done.stderr


def test_malformed_ldif_is_a_setup_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ldif"
    broken.write_text("dn: cn=g,dc=example,dc=com\nthis line has no colon\n")
    done = run("bob", "cn=g,dc=example,dc=com", broken)
    assert done.returncode == 2 and "line 2: not LDIF" in done.stderr


def test_folded_base64_and_member_uid(tmp_path: Path) -> None:
    """LDIF's other spellings: folded lines, base64 values, comments, posixGroup's memberUid."""
    ldif = tmp_path / "posix.ldif"
    ldif.write_text(
        "version: 1\n\n"
        "# people\n"
        "dn: uid=zoe,ou=people,dc=example,dc=com\nuid:: em9l\n\n"  # base64 "zoe"
        "dn: uid=max,ou=people,dc=example,dc=com\nuid: max\n\n"
        "dn: cn=ops,ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\n"
        "member: uid=zoe,ou=peo\n ple,dc=example,dc=com\n\n"
        "dn: cn=posix,ou=groups,dc=example,dc=com\nobjectClass: posixGroup\nmemberUid: max\n")
    assert run("zoe", "cn=ops,ou=groups,dc=example,dc=com", ldif).returncode == 0
    assert run("max", "cn=ops,ou=groups,dc=example,dc=com", ldif).returncode == 1
    assert run("max", "cn=posix,ou=groups,dc=example,dc=com", ldif).returncode == 0
    assert run("MAX", "cn=posix,ou=groups,dc=example,dc=com", ldif).returncode == 1


def test_through_the_role_handler_runner() -> None:
    """As configured in auth.roles: the runner's clean environment is all the script needs."""
    handler = RoleHandler(role="RA Operator", command=(str(SCRIPT), str(DEMO_LDIF), RA_GROUP))
    granted = run_role_handler(handler, Identity(login="bob"))
    refused = run_role_handler(handler, Identity(login="alice"))
    assert granted.granted and granted.reason == "exit 0"
    assert not refused.granted and refused.exit_code == 1 and "alice is not a member" in refused.stderr
