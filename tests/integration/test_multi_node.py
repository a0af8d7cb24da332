"""Nodes are stateless (issue 11): two application nodes and two workers on
one PostgreSQL database, a node and a worker SIGKILLed in the middle of an
issuance, and nothing is lost or done twice.

Ten personalizations run three at a time, each with the real agent
(``openxpki-py-token``, a SoftHSM card) and a user's browser; the browser
starts on one node and the agent talks to the other, so every
personalization crosses nodes.  In the middle the test makes the kills
land inside a transaction, at the worst moment of an issuance: the
certificate signed and stored, not yet committed.  It holds a lock on the
certificate table until node B's PostgreSQL session waits there (an agent's
CSR), then swaps it for a lock on the audit queue (the issuance inserts its
audit row there right after storing the certificate), and when B waits for that, SIGKILLs
node B's whole process group (Apache and its mod_wsgi daemons).  The
issuance workflow B had claimed is orphaned; with worker 1 paused
(SIGSTOP), worker 2 takes it over when its lease runs out, gets as far, and
is SIGKILLed too.  Then the lock goes, worker 1 resumes and finishes the
issuance, and node B is restarted on its port (agents that were talking to
it retry; browsers go to node A meanwhile).  Worker 2 stays dead.

Afterwards: every agent finished with its certificates on its card, every
certificate an agent was told about is in the store, no person, type or
issuance workflow has two certificates, every workflow is final, and once
worker 1 stops (signing a last audit checkpoint) ``openxpki-py audit
verify`` passes with every row anchored.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.agent import card_objects, run_agent
from support.cluster import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PERSONALIZATIONS = 10
AT_ONCE = 3
KILL_AFTER = 3  # personalizations finished before the kills
SERIAL_RE = re.compile(r"^(\w+): serial ([0-9a-fA-F:]+)", re.M)


@dataclass
class Personalization:
    login: str
    workflow_id: int
    agent_node: str
    returncode: int
    stdout: str
    stderr: str
    page: str
    card: Any


def personalize(cluster: Cluster, index: int, card: Any, state_dir: Path,
                agents: dict[int, str]) -> Personalization:
    """One user: browser on node ``index % 2``, agent on the other one (whichever is up).

    ``agents`` learns each workflow's agent node as the agent starts.
    """
    login = cluster.users[index]
    home, other = cluster.nodes[index % 2], cluster.nodes[(index + 1) % 2]
    browser = cluster.browser(login, home)
    wf_id, code = browser.start_personalization()
    agent_node = other if other.alive else home
    agent = run_agent(card, agent_node.url, code, state_dir, timeout=120)
    agents[wf_id] = agent_node.name
    try:
        browser.confirm_card(wf_id)
        out, err = agent.communicate(timeout=150)
    finally:
        if agent.poll() is None:
            agent.kill()
            out, err = agent.communicate()
    return Personalization(login, wf_id, agent_node.name, agent.returncode, out, err, browser.page(wf_id), card)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s: {what}")
        time.sleep(0.05)


def hold_empty_audit_queue(conn: Any) -> None:
    """Lock the audit queue against inserts at a moment it is empty.

    Rows committed before the lock would leave their chainers (a node's
    request, a worker's round) waiting on it, holding the chain's lock:
    worker 2 could then never take over.  Empty, the chainers find nothing.
    """
    deadline = time.monotonic() + 30
    while True:
        conn.exec_driver_sql("SET lock_timeout = '20s'")
        conn.exec_driver_sql("LOCK TABLE audit_pending IN SHARE ROW EXCLUSIVE MODE")
        if conn.exec_driver_sql("SELECT count(*) FROM audit_pending").scalar() == 0:
            return
        conn.rollback()
        if time.monotonic() > deadline:
            raise AssertionError("waited 30 s: the audit queue never emptied")
        time.sleep(0.02)


def kill_node_and_worker_mid_issuance(cluster: Cluster, agents: dict[int, str]) -> None:
    """SIGKILL node B, then worker 2, each after it stored a certificate and before it committed."""
    node_b, first, second = cluster.node("node-b"), cluster.worker("worker-1"), cluster.worker("worker-2")
    # An agent on node B that has not posted a CSR yet will: the lock below is sure to catch B.
    wait_for(lambda: bool(cluster.query(
        "SELECT 1 FROM workflow WHERE id = ANY(:ids) AND state IN ('WAIT_FOR_TOKEN', 'CONFIRM_TOKEN')",
        ids=[wf for wf, node in list(agents.items()) if node == "node-b"])), 60, "an agent on node B before its CSR")
    storing = "INSERT INTO certificate "
    with cluster.db.connect() as certificates, cluster.db.connect() as audit:
        held = certificates.begin()
        certificates.exec_driver_sql("LOCK TABLE certificate IN SHARE ROW EXCLUSIVE MODE")  # inserts wait
        wait_for(lambda: bool(cluster.sessions("node-b", waiting_on="certificate", doing=storing)), 60,
                 "node B never tried to store a certificate")
        # The issuance audits right after storing the certificate: hold the audit
        # queue (its insert waits), let the certificate in.
        hold_empty_audit_queue(audit)
        held.commit()
        wait_for(lambda: bool(cluster.sessions("node-b", waiting_on="audit_pending", holding="certificate")),
                 30, "node B never got past storing its certificate")
        node_b.kill()
        # The database notices the dead client (client_connection_check_interval) and rolls back.
        wait_for(lambda: not cluster.connected("node-b"), 30, "node B's sessions outlived it")
        first.signal(signal.SIGSTOP)
        try:  # the orphaned issuance's lease runs out; worker 2 takes it over, and gets as far
            wait_for(lambda: bool(cluster.sessions("worker-2", waiting_on="audit_pending", holding="certificate")),
                     60, "worker 2 never took over node B's issuance")
            second.kill()
            wait_for(lambda: not cluster.connected("worker-2"), 30, "worker 2's session outlived it")
        finally:
            first.signal(signal.SIGCONT)
        audit.rollback()
    node_b.restart()


def test_a_node_and_a_worker_killed_mid_issuance_lose_and_duplicate_nothing(
        make_cluster: Callable[..., Cluster], make_token: Callable[..., Any], tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2, workers=2, users=PERSONALIZATIONS)
    cards = [make_token(f"card-{i:02d}") for i in range(PERSONALIZATIONS)]
    agents: dict[int, str] = {}
    with ThreadPoolExecutor(AT_ONCE) as pool:
        stream: list[Future[Personalization]] = [
            pool.submit(personalize, cluster, i, cards[i], tmp_path / f"agent-{i}", agents)
            for i in range(PERSONALIZATIONS)]
        try:
            wait_for(lambda: sum(f.done() for f in stream) >= KILL_AFTER, 120, "the first personalizations ended")
            kill_node_and_worker_mid_issuance(cluster, agents)
        except AssertionError:
            for failed in (f.exception() for f in stream if f.done()):
                if failed is not None:
                    raise failed  # the first personalization that went wrong says more
            raise
        results = [f.result() for f in stream]

    assert not cluster.worker("worker-2").alive and cluster.worker("worker-1").alive
    assert all(node.alive for node in cluster.nodes)
    assert {r.agent_node for r in results} == {"node-a", "node-b"}
    for r in results:  # every agent finished, with both certificates on its card
        assert r.returncode == 0, f"{r.login} ({r.agent_node}): {r.stderr}"
        assert "done: 2 certificates on the card" in r.stderr, r.stderr
        assert "Your card is ready." in r.page, r.page[:3000]
        assert [kind for kind, _ in card_objects(r.card)].count("Certificate") == 2
    assert_nothing_lost_or_duplicated(cluster, results)
    # The issuance node B had claimed was finished by the surviving worker.
    taken_over = cluster.query("SELECT h.workflow_id FROM workflow_history h JOIN workflow w ON w.id = h.workflow_id "
                               "WHERE w.wf_type = 'certificate_issuance' AND h.action = 'issue' "
                               "AND h.actor LIKE 'worker@%'")
    assert len(taken_over) == 1, taken_over
    # The surviving worker's clean stop signs the chain's head; the chain and every checkpoint verify.
    assert cluster.worker("worker-1").stop() == 0
    verified = cluster.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    anchored = re.search(r"(\d+) checkpoint\(s\).* (\d+) newer row\(s\) not yet anchored", verified.stdout)
    assert anchored and int(anchored.group(1)) >= 2 and anchored.group(2) == "0", verified.stdout


def assert_nothing_lost_or_duplicated(cluster: Cluster, results: list[Personalization]) -> None:
    workflows = cluster.query("SELECT id, wf_type, state, proc_state, parent_id FROM workflow")
    unfinished = [w for w in workflows if w["proc_state"] not in ("finished", "failed")]
    assert not unfinished, unfinished
    personalizations = {w["id"]: w for w in workflows if w["wf_type"] == "smartcard_personalization"}
    assert sorted(personalizations) == sorted(r.workflow_id for r in results)  # none started twice
    assert {w["state"] for w in personalizations.values()} == {"SUCCESS"}
    issuances = {w["id"]: w for w in workflows if w["wf_type"] == "certificate_issuance"}
    certificates = cluster.query("SELECT serial, owner, profile, workflow_id FROM certificate "
                                 "WHERE owner <> 'ocsp-responder'")
    # Exactly one certificate per issuance workflow, per person and type, per personalization and type.
    assert sorted(c["workflow_id"] for c in certificates) == sorted(issuances)
    assert len({(c["owner"], c["profile"]) for c in certificates}) == len(certificates) == 2 * len(results)
    per_parent = {(issuances[c["workflow_id"]]["parent_id"], c["profile"]) for c in certificates}
    assert len(per_parent) == len(certificates)
    assert {parent for parent, _ in per_parent} == set(personalizations)
    # Every certificate an agent was handed (and acknowledged) is in the store, as its owner's.
    stored = {(c["owner"], int(c["serial"], 16)) for c in certificates}
    for r in results:
        told = {(r.login, int(serial.replace(":", ""), 16)) for _, serial in SERIAL_RE.findall(r.stdout)}
        assert len(told) == 2, r.stdout
        assert told <= stored, (r.login, told, r.stdout)
