"""contrib/auth/check-ldap-group against a real slapd, run as openxpki-py runs it.

The handler gets an argv list and a clean environment with OPENXPKI_USER and
OPENXPKI_ROLE only; exit status 0 grants the role.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.slapd import REPO, SlapdServer

SCRIPT = REPO / "contrib" / "auth" / "check-ldap-group"
ALLOW = REPO / "contrib" / "auth" / "allow"

pytestmark = pytest.mark.skipif(shutil.which("ldapsearch") is None, reason="ldapsearch (ldap-utils) is not installed")


def run(config: Path | None, user: str | None, role: str | None = "RA Operator",
        script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    env = {}
    if user is not None:
        env["OPENXPKI_USER"] = user
    if role is not None:
        env["OPENXPKI_ROLE"] = role
    argv = [str(script)] + ([str(config)] if config is not None else [])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


@pytest.fixture
def config(slapd: SlapdServer, tmp_path: Path) -> Path:
    return slapd.write_check_config(tmp_path / "check-ldap-group.conf")


@pytest.mark.parametrize(("user", "role"), [("bob", "RA Operator"), ("carol", "CA Operator")])
def test_member_is_granted(config: Path, user: str, role: str) -> None:
    done = run(config, user, role)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(("user", "role"), [
    ("bob", "CA Operator"),
    ("carol", "RA Operator"),
    ("alice", "RA Operator"),
    ("alice", "CA Operator"),
    ("dave", "RA Operator"),
])
def test_non_member_is_refused(config: Path, user: str, role: str) -> None:
    done = run(config, user, role)
    assert done.returncode == 1
    assert "not a member" in done.stderr


@pytest.mark.parametrize("user", [
    "*)(uid=*",
    "*",
    "bob)(|(uid=*",
    "b*",
    "bob\\2a",
    "bob ",
    " bob",
    "bob\ncarol",
    "$(touch /tmp/pwned)",
    "",
    "x" * 300,
])
def test_hostile_or_odd_user_names_are_refused(config: Path, user: str, tmp_path: Path) -> None:
    done = run(config, user)
    assert done.returncode != 0
    assert done.stderr.startswith("check-ldap-group: ")
    assert not Path("/tmp/pwned").exists()


def test_unknown_user(config: Path) -> None:
    done = run(config, "mallory")
    assert done.returncode == 1
    assert "no directory entry for user mallory" in done.stderr


def test_ambiguous_user(config: Path) -> None:
    done = run(config, "frank")
    assert done.returncode == 1
    assert "matches 2 directory entries" in done.stderr


def test_missing_user_variable(config: Path) -> None:
    done = run(config, None)
    assert done.returncode == 1
    assert "OPENXPKI_USER" in done.stderr


def test_role_without_group(config: Path) -> None:
    done = run(config, "bob", "Auditor")
    assert done.returncode == 2
    assert "no group for role 'Auditor'" in done.stderr


def test_group_that_does_not_exist(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf",
                                      roles={"RA Operator": "cn=gone,ou=groups,dc=example,dc=com"})
    done = run(config, "bob")
    assert done.returncode == 2
    assert "does not exist" in done.stderr


def test_ldap_down(slapd: SlapdServer, config: Path) -> None:
    slapd.stop()
    done = run(config, "bob")
    assert done.returncode == 3
    assert "cannot query the LDAP server" in done.stderr and slapd.uri in done.stderr
    slapd.start()
    assert run(config, "bob").returncode == 0


def test_bad_password(slapd: SlapdServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-password\n")
    config = slapd.write_check_config(tmp_path / "c.conf", bind_password_file=str(wrong))
    done = run(config, "bob")
    assert done.returncode == 3
    assert "refused the bind" in done.stderr
    assert "wrong-password" not in done.stderr


def test_anonymous(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf", bind_dn="", bind_password_file="")
    assert run(config, "bob").returncode == 0
    assert run(config, "alice").returncode == 1


def test_member_of_mode(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf", membership="memberOf")
    assert run(config, "bob").returncode == 0
    assert run(config, "carol").returncode == 1
    assert run(config, "carol", "CA Operator").returncode == 0


def test_group_of_unique_names(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf",
                                      roles={"Staff": "cn=staff,ou=groups,dc=example,dc=com"})
    assert run(config, "alice", "Staff").returncode == 0
    assert run(config, "bob", "Staff").returncode == 1


def test_starttls(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf", starttls="yes", ca_file=str(slapd.ca_file))
    done = run(config, "bob")
    assert done.returncode == 0, done.stderr


def test_ldaps_untrusted(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf", uri=slapd.ldaps_uri, ca_file="/dev/null")
    done = run(config, "bob")
    assert done.returncode == 3


@pytest.mark.parametrize("user", ["BOB", "Bob", "bOb"])
def test_login_in_another_case_is_not_the_member(config: Path, user: str) -> None:
    # slapd matches uid without regard to case; BOB was granted bob's RA Operator role.
    done = run(config, user, "RA Operator")
    assert done.returncode == 1
    assert "not spelled as in the directory entry" in done.stderr


def test_login_by_mail(slapd: SlapdServer, tmp_path: Path) -> None:
    config = slapd.write_check_config(tmp_path / "c.conf", login_attribute="mail")
    assert run(config, "bob@example.com").returncode == 0
    assert run(config, "alice@example.com").returncode == 1
    assert run(config, "Bob@Example.com").returncode == 1


def test_default_config_next_to_script(slapd: SlapdServer, tmp_path: Path) -> None:
    script = tmp_path / "check-ldap-group"
    shutil.copy(SCRIPT, script)
    slapd.write_check_config(tmp_path / "check-ldap-group.conf")
    assert run(None, "bob", script=script).returncode == 0


def test_missing_config(tmp_path: Path) -> None:
    done = run(tmp_path / "absent.conf", "bob")
    assert done.returncode == 2
    assert "cannot read the config file" in done.stderr


def test_unknown_config_key(tmp_path: Path) -> None:
    config = tmp_path / "c.conf"
    config.write_text("uri=ldap://127.0.0.1:1/\nbase_dn=dc=example,dc=com\nbindpw=secret\n")
    done = run(config, "bob")
    assert done.returncode == 2
    assert "unknown key 'bindpw'" in done.stderr


def test_shipped_config_parses(tmp_path: Path) -> None:
    # The example points at ldap.example.com; make it unreachable fast and
    # check the script gets as far as asking LDAP (exit 3), not a config error.
    text = (REPO / "contrib" / "auth" / "check-ldap-group.conf").read_text()
    text = text.replace("uri=ldap://ldap.example.com/", "uri=ldap://127.0.0.1:1/")
    text = text.replace("bind_password_file=/etc/openxpki-py/ldap.password", f"bind_password_file={tmp_path / 'pw'}")
    (tmp_path / "pw").write_text("x\n")
    config = tmp_path / "c.conf"
    config.write_text(text)
    done = run(config, "bob")
    assert done.returncode == 3, done.stderr


def test_scripts_are_executable_posix_sh() -> None:
    for script in (SCRIPT, ALLOW):
        assert os.access(script, os.X_OK)
        assert script.read_text().startswith("#!/bin/sh\n")
        if shutil.which("dash"):
            assert subprocess.run(["dash", "-n", str(script)]).returncode == 0


def test_allow() -> None:
    assert run(None, "anyone", "User", script=ALLOW).returncode == 0
