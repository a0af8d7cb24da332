"""One instance on several nodes: Apache sites and workers sharing one PostgreSQL database.

A pytest plugin.  ``make_cluster(nodes=2, workers=2, users=10)`` builds one
instance (config.yaml, CA key and audit checkpoint key in a SoftHSM token,
an LDIF directory with ``user01`` … ``userNN`` beside the demo people, a
fresh PostgreSQL database, workflow leases of 5 s) and serves it from ``nodes`` mod_wsgi-express sites (each its own server
root and port, all the same config file) and ``workers`` ``openxpki-py
worker`` processes, all as www-data, as a deployment would run them.

Each node and worker has a process group of its own (``kill()`` is a
SIGKILL of the whole group: Apache, its mod_wsgi daemons, a worker) and its
own PostgreSQL ``application_name`` (``node-a``, ``worker-2`` …, through
``PGAPPNAME``), so a test can see which process waits inside which
transaction (:meth:`Cluster.sessions`) and kill it right there.  :class:`ClusterBrowser` plays a user behind a load
balancer: each request goes to the user's node, or to another one while that
is down.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from .agent import AGENT_RE, CODE_RE, CSRF_RE, PHRASE_RE, VERSION_RE
from .apache import (DEFAULT_PASSWORD, ApacheSite, Browser, HTTPResult, _chown_tree, _prepare_instance,
                     express_site, launch_express)

BIN = Path(sys.executable).parent
CLI = BIN / "openxpki-py"
APACHE_USER = "www-data"
REPO = Path(__file__).resolve().parents[2]
DEMO_LDIF = REPO / "contrib" / "ldap" / "demo.ldif"


def people_ldif(logins: Sequence[str]) -> str:
    """The demo directory plus one complete person per login."""
    entries = [DEMO_LDIF.read_text(encoding="utf-8")]
    for login in logins:
        entries.append(f"dn: uid={login},ou=people,dc=example,dc=com\nobjectClass: person\n"
                       f"objectClass: inetOrgPerson\nobjectClass: pkiDirectoryUser\nuid: {login}\n"
                       f"cn: {login.title()} Example\nsn: Example\nmail: {login}@example.com\n"
                       f"userPrincipalName: {login}@example.com\n")
    return "\n".join(entries)


@dataclass
class Node:
    """One application node: a mod_wsgi-express Apache serving the shared config."""

    name: str
    site: ApacheSite

    @property
    def url(self) -> str:
        """What the personalization page shows as the agent's ``--server``."""
        return f"{self.site.base_url}/openxpki"

    @property
    def alive(self) -> bool:
        return self.site.process is not None and self.site.process.poll() is None

    def kill(self) -> None:
        """SIGKILL Apache and every mod_wsgi daemon of this node at once (a power cut)."""
        assert self.site.process is not None
        os.killpg(self.site.process.pid, signal.SIGKILL)
        self.site.process.wait(timeout=30)

    def restart(self) -> None:
        """Start the node again on the same port, as an administrator or systemd would."""
        launch_express(self.site, own_group=True)


@dataclass
class WorkerProcess:
    """``openxpki-py worker`` as the systemd unit runs it (www-data, SIGTERM to stop)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, user=APACHE_USER, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM and wait (the step in progress finishes); the exit code, None if it was gone."""
        if not self.alive:
            return None
        assert self.process is not None
        self.signal(signal.SIGCONT)  # a stopped worker cannot act on SIGTERM
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


@dataclass
class Cluster:
    folder: Path
    config_path: Path
    db: Engine
    env: dict[str, str]  # SOFTHSM2_CONF for the CA token
    users: list[str]
    nodes: list[Node] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``openxpki-py --config … ARGS`` as Apache's user, as an operator on a node would run it."""
        return subprocess.run([str(CLI), "--config", str(self.config_path), *args], env=self.env,
                              user=APACHE_USER, capture_output=True, text=True, timeout=timeout, check=False)

    def query(self, sql: Any, **params: Any) -> list[Any]:
        statement = text(sql) if isinstance(sql, str) else sql
        with self.db.connect() as conn:
            return list(conn.execute(statement, params).mappings())

    def sessions(self, application: str, *, waiting_on: str, doing: str = "", holding: str | None = None) -> set[int]:
        """Server pids of ``application`` waiting for a lock on table ``waiting_on`` inside a transaction.

        ``doing``: only those whose waiting statement starts so (``INSERT INTO certificate``).
        ``holding``: only those that have written to that table earlier in the
        same transaction (they hold its ROW EXCLUSIVE lock).
        """
        sql = ("SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted "
               "AND l.relation = CAST(:waiting AS regclass) AND a.application_name = :app "
               "AND a.query LIKE :doing")
        if holding is not None:
            sql += (" AND EXISTS (SELECT 1 FROM pg_locks h WHERE h.pid = l.pid AND h.granted "
                    "AND h.relation = CAST(:holding AS regclass) AND h.mode = 'RowExclusiveLock')")
        rows = self.query(sql, waiting=waiting_on, app=application, doing=doing.replace("%", r"\%") + "%",
                          holding=holding)
        return {int(r["pid"]) for r in rows}

    def connected(self, application: str) -> bool:
        """Whether the database still has a session of ``application`` (a killed process's, until noticed)."""
        return bool(self.query("SELECT 1 FROM pg_stat_activity WHERE application_name = :app", app=application))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def worker(self, name: str) -> WorkerProcess:
        return next(w for w in self.workers if w.name == name)

    def browser(self, login: str, node: Node) -> ClusterBrowser:
        return ClusterBrowser(node.site, login, nodes=self.nodes, home=node)

    def error_logs(self) -> str:
        parts = [f"--- {n.name} ({n.site.server_root}) ---\n{n.site.error_log()[-6000:]}" for n in self.nodes]
        parts += [f"--- {w.name} ---\n{w.log.read_text(errors='replace')[-4000:]}" for w in self.workers
                  if w.log.exists()]
        return "\n".join(parts)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for node in self.nodes:
            node.site.stop()


@dataclass
class ClusterBrowser(Browser):
    """A user's browser behind a load balancer: its home node, or any other while that one is down.

    Only a refused connection moves a request (nothing was sent); a request
    cut off by a dying node raises, as a browser shows an error page.
    """

    nodes: list[Node] = field(default_factory=list)
    home: Node | None = None

    def request(self, method: str, path: str, **kw: Any) -> HTTPResult:
        order = sorted(self.nodes, key=lambda n: n is not self.home)
        deadline = time.monotonic() + 30
        while True:
            for node in order:
                self.site = node.site
                try:
                    return super().request(method, path, **kw)
                except ConnectionRefusedError:
                    continue
            if time.monotonic() > deadline:
                raise ConnectionRefusedError(f"no node answers {path}")
            time.sleep(0.2)

    # --- the personalization page -------------------------------------------------------------

    def start_personalization(self) -> tuple[int, str]:
        """/token → the deep-linked page → the enrollment code: (workflow id, code).

        A request cut off by a dying node is done again, as a user reloads
        (the person's one open personalization is found again).
        """
        for _ in range(3):
            try:
                return self._start_personalization()
            except (ConnectionError, http.client.HTTPException):
                time.sleep(0.5)
        return self._start_personalization()

    def _start_personalization(self) -> tuple[int, str]:
        first = self.get("/token")
        assert first.status == 303, (first.status, first.body[:2000])
        page_path = urllib.parse.urlsplit(first.headers["Location"]).path
        wf_id = int(page_path.rsplit("/", 1)[1])
        page = self.get(page_path).body
        shown = self.post(f"/openxpki/personalize/{wf_id}/code", {"csrf_token": _match(CSRF_RE, page),
                                                                  "mode": "deeplink"})
        if shown.status == 303:
            shown = self.get(page_path)
        return wf_id, _match(CODE_RE, shown.body)

    def page(self, wf_id: int) -> str:
        return self.get(f"/openxpki/deeplink/workflow/{wf_id}").body

    def confirm_card(self, wf_id: int, timeout: float = 60.0) -> str:
        """Wait for the page to ask about the agent's card, confirm it; the pairing phrase shown."""
        deadline = time.monotonic() + timeout
        pressed: str | None = None
        while time.monotonic() < deadline:
            try:
                page = self.page(wf_id)
                phrase = PHRASE_RE.search(page)
                if phrase and 'id="confirm-card"' in page:
                    pressed = phrase.group(1)
                    done = self.post(f"/openxpki/personalize/{wf_id}/action", {
                        "csrf_token": _match(CSRF_RE, page), "mode": "deeplink", "action": "confirm_token",
                        "version": _match(VERSION_RE, page), "agent": _match(AGENT_RE, page)})
                    assert done.status == 303, (done.status, done.body[:2000])
                    return pressed
                if pressed is not None:
                    return pressed  # the press was cut off by a dying node, but it counted
            except (ConnectionError, http.client.HTTPException):
                pass  # the node died under the request: look again (wherever the balancer sends us)
            time.sleep(0.2)
        raise AssertionError(f"workflow {wf_id}: the page never asked to confirm the card")


def _match(pattern: Any, page: str) -> str:
    found = pattern.search(page)
    assert found, page[:3000]
    return str(found.group(1))


def _instance_settings(root: Path, cfg: dict[str, Any], *, db_url: str, ca_token: Any, logins: Sequence[str],
                       lease_seconds: int) -> None:
    ldif = root / "people.ldif"
    ldif.write_text(people_ldif(logins), encoding="utf-8")
    cfg["database"] = {"url": db_url}
    cfg["directory"]["ldif_file"] = str(ldif)
    cfg["directory"]["required"] = ["cn", "mail", "upn"]
    cfg["ca"] = ca_token.ca_settings(root, "CN=Cluster Smartcard CA,O=Example Corp,C=DE")
    cfg["web"]["deep_link"] = {"workflow": "smartcard_personalization", "role": "User"}
    # Workers sign checkpoints of the audit chain (at start, then hourly, and at SIGTERM).
    cfg["audit"] = {"checkpoint": {
        "key": {**cfg["ca"]["key"], "algorithm": "ec-p256", "key_label": "audit-checkpoint"},
        "file": str(root / "audit-checkpoints.log")}}
    # A dead node's claim is taken over after this (the shipped default is 5 minutes).
    cfg["workflow"] = {"lease_seconds": lease_seconds, "worker": {"poll_interval": 0.2}}


def build_cluster(folder: Path, db: Engine, ca_token: Any, *, nodes: int = 2, workers: int = 2, users: int = 10,
                  processes: int = 1, threads: int = 4, lease_seconds: int = 5) -> Cluster:
    """Write the instance, initialise its CA, start the nodes and workers."""
    logins = [f"user{i:02d}" for i in range(1, users + 1)]
    db_url = db.url.render_as_string(hide_password=False)
    # A node killed inside a transaction leaves a server session behind until
    # PostgreSQL notices the closed socket; while it waits for a lock it
    # notices only with this set (README, "More than one node").
    with db.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{db.url.database}" SET client_connection_check_interval = \'1s\'')
        conn.commit()
    inst = _prepare_instance(folder, None, {login: DEFAULT_PASSWORD for login in logins},
                             lambda root, cfg: _instance_settings(root, cfg, db_url=db_url, ca_token=ca_token,
                                                                  logins=logins, lease_seconds=lease_seconds))
    env = {**os.environ, "SOFTHSM2_CONF": str(ca_token.softhsm.conf)}
    cluster = Cluster(folder, inst.config_path, db, env, logins)
    _chown_tree(folder)
    for command in (("ca", "init"), ("audit", "init-key")):
        done = cluster.cli(*command)
        assert done.returncode == 0, done.stderr
    for letter in string.ascii_lowercase[:nodes]:
        root = folder / f"node-{letter}"
        root.mkdir()
        site = express_site(root, config_path=inst.config_path, db_path=inst.db_path, htpasswd=inst.htpasswd,
                            processes=processes, threads=threads, envvars={"PGAPPNAME": f"node-{letter}"})
        cluster.nodes.append(Node(f"node-{letter}", launch_express(site, own_group=True)))
    for number in range(1, workers + 1):
        name = f"worker-{number}"
        worker = WorkerProcess(name, [str(CLI), "--config", str(inst.config_path), "worker"],
                               {**env, "PGAPPNAME": name}, folder / f"{name}.log")
        worker.start()
        cluster.workers.append(worker)
    return cluster


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, pg_engine: Engine,
                 make_token: Callable[..., Any]) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(nodes=2, workers=2, users=10, …)``: see :func:`build_cluster`; stopped after the test."""
    clusters: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        folder = Path(tempfile.mkdtemp(prefix="openxpki-cluster-"))  # www-data must reach it: not below /root
        ca_token = make_token(f"cluster-ca-{len(clusters)}", owner=APACHE_USER)
        cluster = build_cluster(folder, pg_engine, ca_token, **options)
        clusters.append(cluster)
        return cluster

    yield make
    failed = getattr(request.node, "rep_call", None)
    for cluster in clusters:
        cluster.stop()
        if failed is not None and failed.failed:
            sys.stderr.write(cluster.error_logs() + "\n")
    for cluster in clusters:
        shutil.rmtree(cluster.folder, ignore_errors=True)
