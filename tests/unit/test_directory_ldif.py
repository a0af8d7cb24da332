"""The LDIF-file backend on its own (the shared cases run against slapd too,
in tests/integration/test_directory_ldap.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from openxpki_py.configreader import Reader
from openxpki_py.directory import (
    Directory,
    DirectoryAttributeMissing,
    DirectoryUnavailable,
    DirectoryUser,
    DirectoryUserNotFound,
    open_directory,
    parse_directory_config,
)
from openxpki_py.directory.ldif import LdifDirectory
from openxpki_py.errors import DirectoryError

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "contrib" / "ldap" / "demo.ldif"


def ldif_directory(path: Path, **overrides: Any) -> Directory:
    data = {"backend": "ldif", "ldif_file": str(path), "base_dn": "dc=example,dc=com",
            "required": ["cn", "mail"], **overrides}
    return open_directory(parse_directory_config(Reader(data, "directory")))


def test_demo_file() -> None:
    directory = ldif_directory(DEMO)
    assert isinstance(directory, LdifDirectory)
    assert isinstance(directory, Directory)  # satisfies the protocol
    alice = directory.find_user("alice")
    assert isinstance(alice, DirectoryUser)
    assert alice.dn == "uid=alice,ou=people,dc=example,dc=com"
    assert alice.attributes["upn"] == "alice@example.com"
    assert directory.is_member("bob", "ra-operators")
    assert not directory.is_member("alice", "ra-operators")
    assert directory.groups("carol") == ["ca-operators"]
    with pytest.raises(DirectoryAttributeMissing, match="'dave'.*mail"):
        directory.find_user("dave")


def test_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "directory.ldif"
    text = DEMO.read_text()
    path.write_text(text)
    directory = ldif_directory(path)
    with pytest.raises(DirectoryUserNotFound):
        directory.find_user("erin")
    path.write_text(text + "\ndn: uid=erin,ou=people,dc=example,dc=com\nobjectClass: person\n"
                    "uid: erin\ncn: Erin\nsn: E\nmail: erin@example.com\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert directory.find_user("erin").attributes["mail"] == "erin@example.com"


def test_missing_file(tmp_path: Path) -> None:
    directory = ldif_directory(tmp_path / "absent.ldif")
    with pytest.raises(DirectoryUnavailable, match="absent.ldif") as info:
        directory.find_user("alice")
    assert info.value.code == "directory.unavailable"


@pytest.mark.parametrize(("content", "message"), [
    ("dn: dc=example,dc=com\nthis is not ldif\n", "not valid LDIF"),
    ("dn: not a dn\ncn: x\n", "not a dn"),
    ("dn: dc=example,dc=com\ndc: example\n\ndn: DC=Example,dc=com\ndc: example\n", "twice"),
])
def test_broken_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "broken.ldif"
    path.write_text(content)
    with pytest.raises(DirectoryUnavailable, match=message):
        ldif_directory(path).find_user("alice")


def test_base_not_in_file(tmp_path: Path) -> None:
    directory = ldif_directory(DEMO, base_dn="dc=other,dc=org")
    with pytest.raises(DirectoryError, match="search base dc=other,dc=org is not in the directory file"):
        directory.find_user("alice")


def test_binary_values_and_options(tmp_path: Path) -> None:
    path = tmp_path / "d.ldif"
    path.write_text(
        "dn: dc=example,dc=com\ndc: example\n\n"
        "dn: uid=zoe,dc=example,dc=com\nobjectClass: person\nuid: zoe\n"
        "cn;lang-de: Zoë\nmail: zoe@example.com\njpegPhoto:: /9j/4AAQ\nsn:: WmVsbGVy\n"
    )
    user = ldif_directory(path, attributes={"cn": "cn", "mail": "mail", "surname": "sn", "photo": "jpegPhoto"}) \
        .find_user("zoe")
    assert dict(user.attributes) == {"cn": "Zoë", "mail": "zoe@example.com", "surname": "Zeller"}


def test_invalid_logins_are_not_found() -> None:
    directory = ldif_directory(DEMO)
    for login in ["", " alice", "alice ", "ali\nce"]:
        with pytest.raises(DirectoryUserNotFound):
            directory.find_user(login)


def test_directory_user_by_hand() -> None:
    user = DirectoryUser("zoe", "uid=zoe,dc=example,dc=com", {"cn": "Zoe"})
    assert user.values("cn") == ("Zoe",) and user.values("mail") == ()
    assert user.get("mail", "-") == "-"


def test_found_user_is_read_only() -> None:
    user = ldif_directory(DEMO).find_user("alice")
    with pytest.raises(TypeError):
        user.attributes["cn"] = "Mallory"  # type: ignore[index]
