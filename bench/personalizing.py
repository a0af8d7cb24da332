"""Shared by the personalization benchmarks: an instance served by Apache, and users personalizing through it.

``setup`` writes an instance in a temp folder (CA key in a SoftHSM token,
LDIF directory with ``user000`` …, SQLite or a PostgreSQL URL);
``temporary_postgresql`` makes and drops a database; ``serve`` starts one
Apache node (``openxpki-py serve``) on the instance; ``start_worker`` one
``openxpki-py worker``.  ``personalize`` plays one user's whole flow over
HTTP, the browser's part on one node and the agent's on the same or
another one (the card's work done beforehand with software keys, so the
figures are the server's); ``run_round`` runs users at once.
``store_check`` counts what must be zero after a run: lost and duplicated
certificates, workflows not final.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from openxpki_py_token.pairing import new_agent_key, public_key_text

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
APACHE_USER = "www-data"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def csr_pem(key: Any) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "card")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """One user's HTTP side (a browser or an agent); records every round trip's duration."""

    def __init__(self, port: int, user: str | None = None) -> None:
        self.port = port
        self.auth = base64.b64encode(f"{user}:pw".encode()).decode() if user else None
        self.cookies: dict[str, str] = {}
        self.bearer: str | None = None
        self.spent = 0.0
        self.round_trips = 0

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None,
                body: Any = None) -> tuple[int, dict[str, str], str]:
        headers: dict[str, str] = {}
        data = None
        if self.auth:
            headers["Authorization"] = f"Basic {self.auth}"
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            data, headers["Content-Type"] = urllib.parse.urlencode(form), "application/x-www-form-urlencoded"
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body), "application/json"
        start = time.perf_counter()
        status, response_headers, set_cookies, text = self.send(method, path, data, headers)
        self.spent += time.perf_counter() - start
        self.round_trips += 1
        for cookie in set_cookies:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return status, response_headers, text

    def send(self, method: str, path: str, data: str | None,
             headers: dict[str, str]) -> tuple[int, dict[str, str], list[str], str]:
        """One HTTP exchange: (status, headers, Set-Cookie values, body)."""
        # A connection per request: Apache closes idle keep-alive connections
        # between the user's steps, and a loopback connect costs ~0.1 ms.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
        finally:
            conn.close()
        return response.status, dict(response.headers), response.headers.get_all("Set-Cookie") or [], text

    def api(self, method: str, call: str, body: Any = None) -> dict[str, Any]:
        status, _, text = self.request(method, f"/openxpki/api/v1/{call}", body=body)
        answer: dict[str, Any] = json.loads(text)
        assert status == 200, (call, status, answer)
        return answer


def _found(pattern: str, page: str) -> str:
    match = re.search(pattern, page)
    assert match, page[:2000]
    return match.group(1)


@dataclass
class Outcome:
    """One personalization: server time (sum of round trips), wall time, what the agent was told."""

    server: float
    wall: float
    workflow_id: int
    serials: list[str]
    round_trips: int


def personalize(port: int, user: str, keys: Sequence[Any], serial: str, *, agent_port: int | None = None,
                client: Any = None) -> Outcome:
    """One user's whole personalization: the browser on ``port``, the agent on ``agent_port`` (default: same).

    ``client(port, user)`` makes the browser's and the agent's HTTP side (default :class:`Client`).
    """
    began = time.perf_counter()
    make = client or Client
    browser, agent = make(port, user), make(agent_port or port, None)
    status, headers, _ = browser.request("GET", "/token")
    path = urllib.parse.urlsplit(headers["Location"]).path
    page = browser.request("GET", path)[2]
    csrf = _found(r'name="csrf_token" value="([^"]+)"', page)
    base = path.replace("/deeplink/workflow/", "/personalize/")
    page = browser.request("POST", f"{base}/code", form={"csrf_token": csrf, "mode": "deeplink"})[2]
    code = _found(r'id="enrollment-code">([^<]+)<', page)
    agent.bearer = agent.api("POST", "enroll", {"code": code, "agent_key": public_key_text(new_agent_key())})[
        "access_token"]
    # The answer carries a wait (the user confirms the card): the agent sleeps it out, then asks GET /task.
    agent.api("POST", "token", {"serial": serial, "model": "bench"})
    page = browser.request("GET", path)[2]
    browser.request("POST", f"{base}/action", form={
        "csrf_token": csrf, "mode": "deeplink", "action": "confirm_token",
        "version": _found(r'name="version" value="(\d+)"', page), "agent": _found(r'name="agent" value="(\d+)"', page)})
    assert len(keys) == 2, "two pre-made card keys per personalization"
    serials = []
    task = agent.api("GET", "task")
    for key in keys:
        # As openxpki-py-token does: each answer carries the next task (next_task, docs/api.md); it
        # asks GET /task only without one (an older server) or after a wait.
        assert task["task"] == "generate_key", task
        task = _next_task(agent, agent.api("POST", "csr", {"cert_type": task["cert_type"], "key_id": task["key_id"],
                                                           "csr": csr_pem(key)}))
        assert task["task"] == "install_certificate", task
        serials.append(task["serial"])
        task = _next_task(agent, agent.api("POST", "receipt", {"cert_type": task["cert_type"],
                                                               "key_id": task["key_id"], "serial": task["serial"]}))
    assert task["task"] == "done", task
    return Outcome(browser.spent + agent.spent, time.perf_counter() - began, int(path.rsplit("/", 1)[1]), serials,
                   browser.round_trips + agent.round_trips)


def _next_task(agent: Client, answer: dict[str, Any]) -> dict[str, Any]:
    """The task the answer carries; else (an older server) GET /task, as the agent does."""
    carried = answer.get("next_task")
    return carried if isinstance(carried, dict) else agent.api("GET", "task")


def run_round(users: Sequence[str], keys: dict[str, list[Any]], tag: str, port_of: Any) -> list[Outcome]:
    """Every user at once; ``port_of(index) -> (browser port, agent port)``."""
    results: list[Outcome] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def one(index: int, user: str) -> None:
        browser_port, agent_port = port_of(index)
        try:
            outcome = personalize(browser_port, user, keys[user], f"{tag}-{user}", agent_port=agent_port)
        except BaseException as exc:  # noqa: BLE001 - reported below, after the others ended
            with lock:
                failures.append(exc)
            raise
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i, u)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures and len(results) == len(users), f"a personalization failed: {failures[:1]}"
    return results


def setup(folder: Path, n_users: int, db_url: str | None, *, workflow: dict[str, Any] | None = None) -> tuple[
        Path, dict[str, str]]:
    """The instance's files, database schema and CA; (config path, environment with SOFTHSM2_CONF)."""
    env = {**os.environ, "SOFTHSM2_CONF": str(folder / "softhsm2.conf")}
    (folder / "tokens").mkdir()
    (folder / "softhsm2.conf").write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
                                          "log.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench-ca", "--so-pin", "12345678",
                    "--pin", "1234"], env=env, check=True, capture_output=True)
    (folder / "pin").write_text("1234")
    ldif = ["dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n"]
    htpasswd = []
    digest = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    for i in range(n_users):
        u = f"user{i:03d}"
        ldif.append(f"dn: uid={u},dc=example,dc=com\nobjectClass: person\nobjectClass: inetOrgPerson\n"
                    f"objectClass: pkiDirectoryUser\nuid: {u}\ncn: User {i}\nsn: User\nmail: {u}@example.com\n"
                    f"userPrincipalName: {u}@example.com\n")
        htpasswd.append(f"{u}:{{SHA}}{digest}\n")
    (folder / "users.ldif").write_text("\n".join(ldif))
    (folder / "htpasswd").write_text("".join(htpasswd))
    (folder / "db").mkdir()
    settings: dict[str, Any] = {
        "instance": {"name": "bench", "base_url": "http://127.0.0.1"},
        "database": {"url": db_url or f"sqlite:///{folder / 'db' / 'openxpki.db'}"},
        "ca": {"key": {"backend": "pkcs11", "algorithm": "rsa-2048", "module": SOFTHSM, "token_label": "bench-ca",
                       "key_label": "ca", "pin_file": "pin"}, "subject": "CN=Bench CA"},
        "directory": {"backend": "ldif", "ldif_file": "users.ldif", "base_dn": "dc=example,dc=com",
                      "required": ["cn", "mail", "upn"]},
        "auth": {"roles": {"User": {"command": ["/bin/true"]}}},
        "web": {"session": {"cookie_secure": False}},
    }
    if workflow is not None:
        settings["workflow"] = workflow
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    shutil.chown(folder, APACHE_USER, APACHE_USER)
    for p in folder.rglob("*"):
        shutil.chown(p, APACHE_USER, APACHE_USER)
    for args in (["init"], ["ca", "init", "--out", str(folder / "ca.pem")]):
        cli(folder / "config.yaml", env, *args)
    return folder / "config.yaml", env


def cli(config: Path, env: dict[str, str], *args: str) -> str:
    """``openxpki-py --config CONFIG ARGS`` as Apache's user; its stdout."""
    return subprocess.run([str(BIN / "openxpki-py"), "--config", str(config), *args], env=env, check=True,
                          capture_output=True, text=True, user=APACHE_USER).stdout


@contextlib.contextmanager
def temporary_postgresql() -> Iterator[str]:
    """A fresh database on the local server (its URL), dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"oxp_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        time.sleep(1)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Node:
    port: int
    apachectl: Path

    def stop(self) -> None:
        subprocess.run([str(self.apachectl), "stop"], capture_output=True, check=False)


def serve(config: Path, env: dict[str, str], folder: Path, server_root: str, *, processes: int,
          threads: int) -> Node:
    """One Apache node (``openxpki-py serve``) on the instance."""
    port = free_port()
    subprocess.run([str(BIN / "openxpki-py"), "--config", str(config), "serve", "--port", str(port),
                    "--htpasswd", str(folder / "htpasswd"), "--server-root", str(folder / server_root),
                    "--apache-dir", str(REPO / "apache"), "--processes", str(processes),
                    "--threads", str(threads)], env=env, check=True, capture_output=True)
    return Node(port, folder / server_root / "apachectl")


def start_worker(config: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``openxpki-py worker`` as the systemd unit runs it; stop it with SIGTERM."""
    return subprocess.Popen([str(BIN / "openxpki-py"), "--config", str(config), "worker"], env=env,
                            user=APACHE_USER, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@dataclass
class StoreCheck:
    """What must all be zero after a run."""

    lost: list[str] = field(default_factory=list)  # serials an agent acknowledged, missing from the store
    duplicated: list[str] = field(default_factory=list)  # an issuance, or a personalization's type, issued twice
    not_final: list[int] = field(default_factory=list)  # workflows still open
    not_successful: list[int] = field(default_factory=list)  # personalizations that did not end in SUCCESS

    def zero(self) -> bool:
        return not (self.lost or self.duplicated or self.not_final or self.not_successful)

    def line(self) -> str:
        return (f"lost {len(self.lost)}, duplicated {len(self.duplicated)}, not final {len(self.not_final)}, "
                f"not successful {len(self.not_successful)}")


def store_check(db_url: str, outcomes: Sequence[Outcome]) -> StoreCheck:
    """Compare what the agents were told with the store, and look for doubles and open workflows."""
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            workflows = list(conn.execute(text("SELECT id, wf_type, state, proc_state, parent_id FROM workflow"))
                             .mappings())
            certificates = list(conn.execute(text(
                "SELECT serial, profile, workflow_id FROM certificate WHERE owner <> 'ocsp-responder'")).mappings())
    finally:
        engine.dispose()
    check = StoreCheck()
    parents = {int(w["id"]): w["parent_id"] for w in workflows}
    check.not_final = [int(w["id"]) for w in workflows if w["proc_state"] not in ("finished", "failed")]
    check.not_successful = [int(w["id"]) for w in workflows
                            if w["wf_type"] == "smartcard_personalization" and w["state"] != "SUCCESS"]
    seen: set[Any] = set()
    for c in certificates:
        for key in (("issuance", c["workflow_id"]), ("type", parents.get(c["workflow_id"]), c["profile"])):
            if key in seen:
                check.duplicated.append(c["serial"])
            seen.add(key)
    stored = {int(c["serial"], 16) for c in certificates}
    check.lost = [s for o in outcomes for s in o.serials if int(s.replace(":", ""), 16) not in stored]
    return check
