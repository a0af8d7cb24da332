"""The directory against a real slapd, and the LDIF backend on the same data.

Every behavioural case runs on both backends (``directory`` is parametrized),
so "the LDIF file answers like the server" is checked case by case; a
cross-check compares the two answers for a list of logins directly.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.slapd import SlapdServer, make_tls

from openxpki_py.auth.person import UnknownPerson, resolve_person
from openxpki_py.configreader import Reader
from openxpki_py.directory import (
    Directory,
    DirectoryAmbiguous,
    DirectoryAttributeMissing,
    DirectoryCredentialsError,
    DirectoryGroupNotFound,
    DirectoryUnavailable,
    DirectoryUser,
    DirectoryUserNotFound,
    open_directory,
    parse_directory_config,
)
from openxpki_py.errors import DirectoryError

PEOPLE = "ou=people,dc=example,dc=com"


def make_directory(settings: dict[str, Any]) -> Directory:
    return open_directory(parse_directory_config(Reader(settings, "directory")))


@pytest.fixture(params=["ldap", "ldif"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def connect(slapd: SlapdServer, backend: str) -> Iterator[Any]:
    """Open a directory on the test server (or its LDIF file) with overrides; closed after."""
    opened: list[Directory] = []

    def _open(**overrides: Any) -> Directory:
        directory = make_directory(slapd.directory_settings(backend, **overrides))
        opened.append(directory)
        return directory

    yield _open
    for directory in opened:
        directory.close()


@pytest.fixture
def directory(connect: Any) -> Directory:
    return connect()  # type: ignore[no-any-return]


# ---- lookups -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "login"),
    [
        ("uid", "alice"),
        ("uid", "ALICE"),  # uid matching is case-insensitive, as on the server
        ("sAMAccountName", "alice.example"),
        ("userPrincipalName", "alice@example.com"),
        ("mail", "alice@example.com"),
        ("mail", "a.example@example.com"),  # any value of a multi-valued attribute
    ],
)
def test_find_user_by_each_login_attribute(connect: Any, attribute: str, login: str) -> None:
    user = connect(login_attribute=attribute).find_user(login)
    assert user.dn.lower() == f"uid=alice,{PEOPLE}"
    # The entry's own spelling, not the one asked for: "ALICE" found alice.
    assert user.login == (login.lower() if attribute == "uid" else login)
    assert user.attributes["cn"] == "Alice Example"


def test_mapped_attributes(directory: Directory) -> None:
    user = directory.find_user("alice")
    assert dict(user.attributes) == {
        "cn": "Alice Example",
        "given_name": "Alice",
        "surname": "Example",
        "mail": "alice@example.com",
        "upn": "alice@example.com",
        "employee_number": "1001",
        "department": "Engineering",
        "object_sid": "S-1-5-21-1004336348-1177238915-682003330-1104",
    }
    assert user.values("mail") == ("alice@example.com", "a.example@example.com")
    assert user.values("title") == ()


def test_custom_mapping(connect: Any) -> None:
    directory = connect(attributes={"full_name": "cn", "job": "title", "login": "uid"}, required=["job"])
    user = directory.find_user("alice")
    assert dict(user.attributes) == {"full_name": "Alice Example", "job": "Engineer", "login": "alice"}


def test_escaped_login_matches_literally(directory: Directory) -> None:
    # "star*" unescaped would match "starfish" too and be ambiguous.
    user = directory.find_user("star*")
    assert user.attributes["cn"] == "Star (Asterisk)"


@pytest.mark.parametrize("login", ["*", "*)(uid=*", "alice)(|(uid=*", "al*", "\\2a", "alice\x00"])
def test_filter_injection_finds_nobody(directory: Directory, login: str) -> None:
    with pytest.raises(DirectoryUserNotFound) as info:
        directory.find_user(login)
    assert info.value.code == "directory.user_not_found"


# ---- failures ----------------------------------------------------------------


def test_user_not_found_names_login(directory: Directory) -> None:
    with pytest.raises(DirectoryUserNotFound, match="'mallory'") as info:
        directory.find_user("mallory")
    assert "uid under dc=example,dc=com" in info.value.message


def test_several_entries(directory: Directory) -> None:
    with pytest.raises(DirectoryAmbiguous, match="'frank' matches 2 directory entries") as info:
        directory.find_user("frank")
    assert info.value.code == "directory.ambiguous"
    assert "ou=contractors" in info.value.message


def test_required_attribute_missing(directory: Directory) -> None:
    with pytest.raises(DirectoryAttributeMissing) as info:
        directory.find_user("dave")
    assert info.value.code == "directory.attribute_missing"
    assert "'dave'" in info.value.message and "mail" in info.value.message


def test_missing_optional_attribute_is_absent(connect: Any) -> None:
    user = connect(required=["cn"]).find_user("dave")
    assert "mail" not in user.attributes and user.get("mail") is None
    assert user.attributes["cn"] == "Dave Nomail"


# ---- groups --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("login", "group", "expected"),
    [
        ("bob", "ra-operators", True),
        ("bob", "ca-operators", False),
        ("carol", "ca-operators", True),
        ("carol", "ra-operators", False),
        ("alice", "ra-operators", False),
        ("alice", "ca-operators", False),
        ("bob", "cn=ra-operators,ou=groups,dc=example,dc=com", True),
        ("bob", "CN=RA-Operators, OU=Groups, DC=example, DC=com", True),
        ("alice", "staff", True),  # groupOfUniqueNames
        ("bob", "staff", False),
    ],
)
def test_is_member(directory: Directory, login: str, group: str, expected: bool) -> None:
    assert directory.is_member(login, group) is expected
    assert directory.is_member(directory.find_user(login), group) is expected


def test_groups(directory: Directory) -> None:
    assert directory.groups("alice") == ["staff"]
    assert directory.groups("bob") == ["ra-operators"]
    assert directory.groups("carol") == ["ca-operators"]
    assert directory.groups("dave") == ["staff"]  # no required check for membership questions


@pytest.mark.parametrize("group", ["no-such-group", "cn=nope,ou=groups,dc=example,dc=com",
                                   "uid=alice,ou=people,dc=example,dc=com"])
def test_unknown_group(directory: Directory, group: str) -> None:
    with pytest.raises(DirectoryGroupNotFound) as info:
        directory.is_member("bob", group)
    assert info.value.code == "directory.group_not_found"


def test_membership_of_unknown_user(directory: Directory) -> None:
    with pytest.raises(DirectoryUserNotFound):
        directory.is_member("mallory", "ra-operators")


def test_member_of_mode(connect: Any) -> None:
    directory = connect(membership="memberOf")
    assert directory.is_member("bob", "ra-operators") is True
    assert directory.is_member("bob", "ca-operators") is False
    assert directory.is_member("alice", "ra-operators") is False
    assert directory.groups("carol") == ["ca-operators"]
    assert directory.groups("alice") == []


def test_paged_group_search(connect: Any, backend: str) -> None:
    # page_size 1 forces a page per entry on the server (the LDIF backend ignores it).
    overrides: dict[str, Any] = {"groups": {"base_dn": "dc=example,dc=com"}}
    if backend == "ldap":
        overrides["ldap"] = {"page_size": 1}
    directory = connect(**overrides)
    assert directory.groups("alice") == ["staff"]
    assert directory.find_user("bob").attributes["cn"] == "Bob Builder"


def test_paging_fetches_every_page(slapd: SlapdServer) -> None:
    directory = ldap_directory(slapd, page_size=2)
    try:
        directory.find_user("alice")  # connect
        conn = directory._conn  # type: ignore[attr-defined]
        calls: list[int] = []
        original = conn.search_ext

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return original(*args, **kwargs)

        conn.search_ext = counting
        people = directory._search(  # type: ignore[attr-defined]
            "dc=example,dc=com", "subtree", "(objectClass=person)", ["uid"])
        uids = sorted(values["uid"][0] for _dn, values in people)
        assert uids == ["alice", "bob", "carol", "dave", "frank", "frank", "star*", "starfish"]
        assert len(calls) == 4  # 8 entries, 2 a page
    finally:
        directory.close()


# ---- both backends agree -------------------------------------------------------


def _answer(directory: Directory, login: str) -> object:
    try:
        user = directory.find_user(login)
    except DirectoryError as exc:
        return exc.code
    return (user.dn.lower(), dict(user.attributes), directory.groups(user))


def test_backends_answer_identically(slapd: SlapdServer) -> None:
    server = make_directory(slapd.directory_settings("ldap"))
    local = make_directory(slapd.directory_settings("ldif"))
    try:
        for login in ["alice", "bob", "carol", "dave", "frank", "star*", "starfish", "*", "nobody"]:
            assert _answer(server, login) == _answer(local, login), login
    finally:
        server.close()
        local.close()


# ---- LDAP: connections, credentials, TLS -----------------------------------------


def ldap_directory(slapd: SlapdServer, **ldap_overrides: Any) -> Directory:
    return make_directory(slapd.directory_settings("ldap", ldap=ldap_overrides))


def test_reconnects_after_restart(slapd: SlapdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    directory = ldap_directory(slapd)
    try:
        assert directory.find_user("alice").attributes["cn"] == "Alice Example"
        slapd.restart()
        assert directory.find_user("bob").attributes["cn"] == "Bob Builder"
        assert directory.is_member("bob", "ra-operators")
    finally:
        directory.close()
    assert "reconnecting" in caplog.text  # the kept connection was found dead and replaced
    assert slapd.bind_password not in caplog.text


def test_server_down_then_back(slapd: SlapdServer) -> None:
    directory = ldap_directory(slapd)
    try:
        directory.find_user("alice")
        slapd.stop()
        with pytest.raises(DirectoryUnavailable) as info:
            directory.find_user("alice")
        assert info.value.code == "directory.unavailable"
        assert slapd.uri in info.value.message
        with pytest.raises(DirectoryUnavailable):
            directory.is_member("bob", "ra-operators")
        slapd.start()
        assert directory.is_member("bob", "ra-operators") is True
    finally:
        directory.close()


def test_server_down_from_the_start(slapd: SlapdServer) -> None:
    slapd.stop()
    directory = ldap_directory(slapd)
    with pytest.raises(DirectoryUnavailable, match="cannot reach the LDAP server"):
        directory.find_user("alice")
    slapd.start()
    assert directory.find_user("alice").dn
    directory.close()


def test_bad_credentials(slapd: SlapdServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    directory = ldap_directory(slapd, bind_password_file=str(wrong))
    with pytest.raises(DirectoryCredentialsError) as info:
        directory.find_user("alice")
    assert info.value.code == "directory.credentials"
    assert "cn=admin,dc=example,dc=com" in info.value.message
    assert "not-the-password" not in info.value.message
    directory.close()


def test_password_from_environment(slapd: SlapdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LDAP_PASSWORD", slapd.bind_password)
    settings = slapd.directory_settings("ldap")
    del settings["ldap"]["bind_password_file"]
    settings["ldap"]["bind_password_env"] = "TEST_LDAP_PASSWORD"
    directory = make_directory(settings)
    assert directory.find_user("alice").attributes["upn"] == "alice@example.com"
    directory.close()


def test_anonymous_bind(slapd: SlapdServer) -> None:
    settings = slapd.directory_settings("ldap")
    del settings["ldap"]["bind_dn"], settings["ldap"]["bind_password_file"]
    directory = make_directory(settings)
    assert directory.find_user("carol").attributes["mail"] == "carol@example.com"
    assert directory.is_member("carol", "ca-operators")
    directory.close()


def test_starttls_with_ca_file(slapd: SlapdServer) -> None:
    directory = ldap_directory(slapd, uri=slapd.uri, starttls=True,
                               ca_file=str(slapd.ca_file))
    assert directory.find_user("alice").attributes["cn"] == "Alice Example"
    directory.close()


def test_ldaps_with_ca_file(slapd: SlapdServer) -> None:
    directory = ldap_directory(slapd, uri=slapd.ldaps_uri, starttls=False, ca_file=str(slapd.ca_file))
    assert directory.find_user("alice").attributes["cn"] == "Alice Example"
    directory.close()


def test_ldaps_with_untrusted_certificate(slapd: SlapdServer, tmp_path: Path) -> None:
    other_ca, _cert, _key = make_tls(tmp_path)
    directory = ldap_directory(slapd, uri=slapd.ldaps_uri, starttls=False, ca_file=str(other_ca))
    with pytest.raises(DirectoryUnavailable):
        directory.find_user("alice")
    directory.close()


def test_starttls_refused_by_plain_listener(slapd: SlapdServer) -> None:
    # ldaps port spoken to with StartTLS: the handshake fails, clearly and quickly.
    directory = ldap_directory(slapd, uri=f"ldap://127.0.0.1:{slapd.ldaps_port}/", starttls=True,
                               ca_file=str(slapd.ca_file), timeout=2)
    with pytest.raises(DirectoryUnavailable):
        directory.find_user("alice")
    directory.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize(("scheme", "starttls"), [
    ("ldap", False), ("ldap", True),
    # libldap's TLS handshake on ldaps:// has no deadline of its own (OPT_NETWORK_TIMEOUT covers
    # the TCP connect only): the backend bounds it with a handshake probe.
    ("ldaps", False),
])
def test_timeout(slapd: SlapdServer, silent_server: int, scheme: str, starttls: bool) -> None:
    directory = ldap_directory(slapd, uri=f"{scheme}://127.0.0.1:{silent_server}/", timeout=0.5, starttls=starttls,
                               ca_file=str(slapd.ca_file))
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable, match="did not answer within 0.5 s"):
        directory.find_user("alice")
    assert time.monotonic() - started < 5
    directory.close()


def test_threads_waiting_for_a_silent_server_each_wait_about_one_timeout(slapd: SlapdServer,
                                                                          silent_server: int) -> None:
    """Six lookups at once while the server accepts and never answers.

    They took turns on the process's one connection, each trying its own
    connect for a whole timeout: the last one waited six timeouts (a page,
    or a workflow step holding the database's write lock).  Now the first
    one's slow failure answers the others at once, for one timeout.
    """
    directory = ldap_directory(slapd, uri=f"ldap://127.0.0.1:{silent_server}/", timeout=1)
    errors: list[str] = []
    took: list[float] = []
    start = threading.Barrier(6)

    def look() -> None:
        start.wait()
        started = time.monotonic()
        try:
            directory.find_user("alice")
        except DirectoryUnavailable as exc:
            errors.append(exc.message)
        took.append(time.monotonic() - started)

    threads = [threading.Thread(target=look) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    directory.close()
    assert len(errors) == 6
    assert all("did not answer within 1 s" in e for e in errors), errors
    assert max(took) < 3.5, took  # about one timeout, not six


def test_connection_is_reused(slapd: SlapdServer) -> None:
    directory = ldap_directory(slapd)
    try:
        directory.find_user("alice")
        first = directory._conn  # type: ignore[attr-defined]
        directory.find_user("bob")
        directory.is_member("bob", "ra-operators")
        assert directory._conn is first  # type: ignore[attr-defined]
    finally:
        directory.close()


def test_concurrent_lookups(slapd: SlapdServer) -> None:
    directory = ldap_directory(slapd)
    errors: list[BaseException] = []

    def look() -> None:
        try:
            for login in ("alice", "bob", "carol") * 10:
                assert isinstance(directory.find_user(login), DirectoryUser)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=look) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    directory.close()
    assert errors == []


def test_missing_search_base(slapd: SlapdServer, backend: str) -> None:
    directory = make_directory(slapd.directory_settings(backend, base_dn="ou=nowhere,dc=example,dc=com"))
    with pytest.raises(DirectoryError, match="ou=nowhere,dc=example,dc=com"):
        directory.find_user("alice")
    directory.close()


def test_person_is_the_entrys_own_spelling(directory: Directory) -> None:
    # slapd and the LDIF file both match uid without regard to case; the person does not.
    assert resolve_person(directory, "alice").dn.lower() == f"uid=alice,{PEOPLE}"
    for other in ("ALICE", "Alice"):
        with pytest.raises(UnknownPerson, match="is spelled 'alice' in the directory"):
            resolve_person(directory, other)
    with pytest.raises(UnknownPerson, match="does not name one person"):
        resolve_person(directory, "nobody")


def test_page_answers_502_within_the_timeout_when_the_directory_never_answers(
        slapd: SlapdServer, silent_server: int, make_instance: Any, sqlite_engine: Any) -> None:
    """A new session looks the login up in the directory: a silent server costs one timeout, then 502."""
    from werkzeug.test import Client

    from openxpki_py.web.app import create_app

    def silent_directory(settings: dict[str, Any]) -> None:
        settings["directory"] = slapd.directory_settings(
            "ldap", ldap={"uri": f"ldap://127.0.0.1:{silent_server}/", "timeout": 1})
    inst = make_instance(sqlite_engine, init_ca=False, overrides=silent_directory)
    client = Client(create_app(inst.config, inst.services))
    started = time.monotonic()
    answer = client.get("/", environ_overrides={"REMOTE_USER": "alice"})
    assert answer.status_code == 502, answer.get_data(as_text=True)
    assert "directory.unavailable" in answer.get_data(as_text=True)
    assert time.monotonic() - started < 4  # the 1 s timeout (connect, bind or search), not a hang
