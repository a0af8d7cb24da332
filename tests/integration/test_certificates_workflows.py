"""The certificates domain's workflows with the CA key in SoftHSM, on SQLite and PostgreSQL.

Issuance forked by a parent (a stand-in for the personalization), approval
by RA Operators, the CA token offline and back, revocation with a CRL, and
a worker killed inside the issuance.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from data.workflow.activities_for_tests import FakeClock, load_test_definitions
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from support.pkix import assert_cert_lints_clean, assert_chain_lints_clean, assert_crl_lints_clean

from openxpki_py.audit import append_audit
from openxpki_py.crypto.profiles import BUILTIN_DIR
from openxpki_py.db.schema import certificate, workflow
from openxpki_py.workflow import WorkflowEngine, WorkflowView
from openxpki_py.workflow.errors import AccessDenied, ActivityFailed

SCRIPT = Path(__file__).parents[1] / "data" / "workflow" / "wf_process.py"
RA = "RA Operator"
ALICE = {"cn": "Alice Example", "mail": "alice@example.com", "upn": "alice@example.com"}


def csr_pem(key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")]))
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def approval_profiles(folder: Path, required: int) -> Callable[[dict[str, Any]], None]:
    """A site profile folder where `encryption` needs ``required`` approvals."""
    folder.mkdir(exist_ok=True)
    data = yaml.safe_load((BUILTIN_DIR / "encryption.yaml").read_text())
    data["approval"] = {"required": required}
    (folder / "encryption.yaml").write_text(yaml.safe_dump(data))

    def override(settings: dict[str, Any]) -> None:
        settings["ca"]["profiles_dir"] = str(folder)
    return override


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def approvals() -> int:
    """Approvals the encryption profile needs; a test parametrises it to change that."""
    return 0


@pytest.fixture
def pki(make_instance: Callable[..., Any], db_engine: Engine, clock: FakeClock, tmp_path: Path,
        approvals: int) -> Iterator[tuple[Any, WorkflowEngine]]:
    overrides = approval_profiles(tmp_path / "profiles", approvals) if approvals else None
    inst = make_instance(db_engine, algorithm="ec-p256", overrides=overrides)
    yield inst, engine_for(inst, clock)


def engine_for(inst: Any, clock: FakeClock) -> WorkflowEngine:
    return WorkflowEngine(inst.services.db, load_test_definitions(include_shipped=True), inst.services, clock=clock)


def enroll(engine: WorkflowEngine, **csrs: str) -> WorkflowView:
    return engine.start("test_enrollment", actor="alice", role="User", context={"csrs": csrs, "subject": ALICE})


def child(engine: WorkflowEngine, parent: WorkflowView, profile: str) -> WorkflowView:
    for c in engine.children(parent.id):
        view = engine.get(c.id)
        if view.context["profile"] == profile:
            return view
    raise AssertionError(f"no {profile} child")


def certificates(inst: Any) -> list[x509.Certificate]:
    with inst.services.db.connect() as conn:
        return [x509.load_der_x509_certificate(d) for (d,) in conn.execute(select(certificate.c.der))]


def test_issuance_in_one_request_lints_clean(pki: tuple[Any, WorkflowEngine], tmp_path: Path) -> None:
    inst, engine = pki
    parent = enroll(engine, smartcard_logon=csr_pem(rsa.generate_private_key(65537, 2048)), encryption=csr_pem())
    assert (parent.state, parent.proc_state) == ("SUCCESS", "finished")  # no worker involved
    issued = certificates(inst)
    assert sorted(format(c.serial_number, "x") for c in issued) == sorted(parent.context["serials"].values())
    with inst.services.db.connect() as conn:
        ca_cert = inst.services.ca.certificate(conn)
    for cert in issued:
        # from alice's directory entry (OU from departmentNumber), not from the subject the caller passed
        assert cert.subject.rfc4514_string() == "CN=Alice Example,OU=Engineering,O=Example Corp,C=DE"
        assert_cert_lints_clean(cert, tmp_path)
        assert_chain_lints_clean(ca_cert, cert, tmp_path)
    logon = child(engine, parent, "smartcard_logon")
    assert [h.action for h in logon.history] == ["start", "check_request", "issue"]
    assert logon.context["subject_dn"] == "CN=Alice Example,OU=Engineering,O=Example Corp,C=DE"
    assert engine.search(certificate_serial=logon.context["certificate_serial"])[0].id == logon.id


def test_policy_refusal_is_a_final_rejection(pki: tuple[Any, WorkflowEngine]) -> None:
    inst, engine = pki
    weak = csr_pem(rsa.generate_private_key(65537, 1024))
    parent = enroll(engine, smartcard_logon=weak)
    assert parent.state == "FAILURE"
    rejected = child(engine, parent, "smartcard_logon")
    assert (rejected.state, rejected.proc_state) == ("REJECTED", "failed")
    assert rejected.context["failure"]["code"].startswith("csr.")
    assert certificates(inst) == []


@pytest.mark.parametrize("approvals", [1])
def test_approval_by_a_second_user_wakes_parent(pki: tuple[Any, WorkflowEngine]) -> None:
    inst, engine = pki
    parent = enroll(engine, smartcard_logon=csr_pem(), encryption=csr_pem())
    assert (parent.state, parent.proc_state) == ("WAIT", "waiting")
    assert child(engine, parent, "smartcard_logon").state == "ISSUED"
    pending = child(engine, parent, "encryption")
    assert (pending.state, [a.name for a in pending.available_actions(RA)]) == ("PENDING_APPROVAL",
                                                                               ["approve", "reject"])
    with pytest.raises(AccessDenied):
        engine.execute(pending.id, "approve", actor="alice", role="User")
    with pytest.raises(ActivityFailed, match="another RA Operator must approve") as info:
        engine.execute(pending.id, "approve", actor="alice", role=RA)  # the requester, even as RA Operator
    assert info.value.cause_code == "approval.own_request"
    engine.execute(pending.id, "approve", actor="olga", role=RA, inputs={"comment": "known user"},
                   expected_version=pending.version)
    assert child(engine, parent, "encryption").state == "ISSUED"
    parent = engine.get(parent.id)
    assert (parent.state, parent.proc_state) == ("SUCCESS", "finished")
    assert len(certificates(inst)) == 2


@pytest.mark.parametrize("approvals", [1])
def test_an_approval_nobody_gives_expires_and_ends_the_parent(pki: tuple[Any, WorkflowEngine],
                                                             clock: FakeClock) -> None:
    inst, engine = pki
    parent = enroll(engine, encryption=csr_pem())
    pending = child(engine, parent, "encryption")
    assert pending.state == "PENDING_APPROVAL"
    clock.advance(13 * 86400)
    assert engine.resume_due() == 0
    clock.advance(2 * 86400)
    assert engine.resume_due() >= 1
    expired = engine.get(pending.id)
    assert expired.state == "REJECTED" and "before the deadline" in expired.context["rejection"]["reason"]
    parent = engine.get(parent.id)
    assert parent.proc_state in ("finished", "failed") and parent.state != "WAIT"
    assert certificates(inst) == []


@pytest.mark.parametrize("approvals", [2])
def test_two_distinct_approvers_or_a_rejection(pki: tuple[Any, WorkflowEngine]) -> None:
    inst, engine = pki
    parent = enroll(engine, encryption=csr_pem())
    pending = child(engine, parent, "encryption")
    pending = engine.execute(pending.id, "approve", actor="olga", role=RA)
    assert pending.state == "PENDING_APPROVAL"
    with pytest.raises(ActivityFailed, match="different RA Operator"):
        engine.execute(pending.id, "approve", actor="olga", role=RA)
    engine.execute(pending.id, "approve", actor="peter", role=RA)
    assert engine.get(parent.id).state == "SUCCESS"

    second = enroll(engine, encryption=csr_pem())
    pending = child(engine, second, "encryption")
    engine.execute(pending.id, "reject", actor="olga", role=RA, inputs={"rejection": "not employed here"})
    rejected = engine.get(pending.id)
    assert (rejected.state, rejected.context["rejection"]["reason"]) == ("REJECTED", "not employed here")
    second = engine.get(second.id)
    assert (second.state, second.context["failures"]) == ("FAILURE", {"encryption": None})
    assert len(certificates(inst)) == 1


def test_ca_offline_child_waits_then_completes(pki: tuple[Any, WorkflowEngine], clock: FakeClock) -> None:
    inst, _ = pki
    pin_file = Path(inst.config.ca.key.pin.file)
    inst.ca_token.write_pin(pin_file, pin="0000")
    inst.reload()  # a process that starts while the PIN is wrong
    engine = engine_for(inst, clock)
    parent = enroll(engine, smartcard_logon=csr_pem())
    assert parent.proc_state == "waiting"
    issuing = child(engine, parent, "smartcard_logon")
    assert (issuing.state, issuing.proc_state, issuing.retry_count) == ("ISSUE", "retry", 1)
    assert issuing.last_error is not None and issuing.last_error.startswith("token.pin"), issuing.last_error
    clock.advance(30)
    assert engine.resume_due() == 1  # the worker tries again: still refused
    assert engine.get(issuing.id).retry_count == 2
    inst.ca_token.write_pin(pin_file)  # the operator fixes the PIN file
    clock.advance(3600)
    assert engine.resume_due() == 1
    assert (engine.get(issuing.id).state, engine.get(parent.id).state) == ("ISSUED", "SUCCESS")
    assert len(certificates(inst)) == 1
    assert [h.outcome for h in engine.get(issuing.id).history if h.action == "issue"] == ["failed", "failed", "ok"]


def test_revocation_with_crl(pki: tuple[Any, WorkflowEngine], tmp_path: Path) -> None:
    inst, engine = pki
    parent = enroll(engine, smartcard_logon=csr_pem(), encryption=csr_pem())
    serials = parent.context["serials"]
    other = engine.start("certificate_revocation", actor="bob", role="User",
                         context={"serial": serials["encryption"], "reason": "keyCompromise"})
    assert (other.state, other.context["failure"]["code"]) == ("REJECTED", "revoke.not_owner")
    own = engine.start("certificate_revocation", actor="alice", role="User",
                       context={"serial": serials["encryption"], "reason": "keyCompromise", "publish_crl": True})
    assert own.state == "PENDING_APPROVAL"
    own = engine.execute(own.id, "approve", actor="olga", role=RA)
    assert (own.state, own.context["crl_number"], own.context["crl_revoked"]) == ("REVOKED", 1, 1)
    published = Path(own.context["crl_published"][0])
    crl = x509.load_der_x509_crl(published.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(serials["encryption"], 16)) is not None
    assert_crl_lints_clean(crl, tmp_path)
    direct = engine.start("certificate_revocation", actor="olga", role=RA,
                          context={"serial": serials["smartcard_logon"], "reason": "superseded"})
    assert direct.state == "REVOKED" and "crl_number" not in direct.context
    again = engine.start("certificate_revocation", actor="olga", role=RA,
                         context={"serial": serials["smartcard_logon"], "reason": "superseded"})
    assert (again.state, again.context["failure"]["code"]) == ("REJECTED", "revoke.already")
    crl_run = engine.start("crl_issuance", actor="cron", role="System")
    assert (crl_run.state, crl_run.context["crl_number"], crl_run.context["crl_revoked"]) == ("PUBLISHED", 2, 2)


def test_worker_killed_inside_issuance(pki: tuple[Any, WorkflowEngine], clock: FakeClock,
                                       tmp_path: Path) -> None:
    inst, _ = pki
    pin_file = Path(inst.config.ca.key.pin.file)
    inst.ca_token.write_pin(pin_file, pin="0000")
    inst.reload()
    engine = engine_for(inst, clock)
    wf = engine.start("certificate_issuance", actor="olga", role=RA,
                      context={"csr": csr_pem(), "profile": "smartcard_logon", "subject": ALICE, "owner": "alice"})
    assert wf.proc_state == "retry"
    inst.ca_token.write_pin(pin_file)
    with inst.services.db.begin() as conn:
        conn.execute(update(workflow).where(workflow.c.id == wf.id)
                     .values(wake_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
    block, reached = tmp_path / "block", tmp_path / "reached"
    block.touch()
    env = {"OXP_TEST_BLOCK_FILE": str(block), "OXP_TEST_REACHED_FILE": str(reached)}
    first = spawn_worker(inst, env)
    try:
        deadline = time.monotonic() + 60
        while not reached.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1]
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # the certificate is signed and stored, not committed
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    block.unlink()
    assert engine.get(wf.id).proc_state == "running" and certificates(inst) == []
    second = spawn_worker(inst, {})
    try:
        deadline = time.monotonic() + 60
        while engine.get(wf.id).state != "ISSUED":
            assert second.poll() is None and time.monotonic() < deadline, engine.get(wf.id)
            time.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0
    finally:
        if second.poll() is None:
            second.kill()
        second.communicate()
    (issued,) = certificates(inst)
    assert format(issued.serial_number, "x") == engine.get(wf.id).context["certificate_serial"]
    with inst.services.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(certificate)).scalar_one() == 1


def spawn_worker(inst: Any, env: dict[str, str]) -> subprocess.Popen[str]:
    import os

    return subprocess.Popen([sys.executable, str(SCRIPT), "instance-worker", str(inst.config_path), "2", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def test_subject_for_an_owner_comes_from_the_directory(pki: tuple[Any, WorkflowEngine]) -> None:
    """An operator starting an issuance cannot put someone else's UPN into alice's certificate."""
    inst, engine = pki
    forged = {"cn": "Domain Admin", "mail": "admin@example.com", "upn": "administrator@example.com"}
    wf = engine.start("certificate_issuance", actor="bob", role="RA Operator",
                      context={"csr": csr_pem(), "profile": "smartcard_logon", "subject": forged, "owner": "alice"})
    assert wf.state == "ISSUED", (wf.state, wf.last_error)
    (cert,) = certificates(inst)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    assert b"administrator" not in san.get_values_for_type(x509.OtherName)[0].value
    assert "Domain Admin" not in cert.subject.rfc4514_string()


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_hung_directory_does_not_hold_the_write_lock(make_instance: Callable[..., Any], db_engine: Engine,
                                                       clock: FakeClock, slapd: Any) -> None:
    # check_request looks the owner up in the directory.  It did so inside the step's write
    # transaction, and on SQLite that excludes every other writer: with the directory hung, every
    # request, worker and process that writes waited for the lookup's timeout.
    def ldap_directory(settings: dict[str, Any]) -> None:
        settings["directory"] = slapd.directory_settings("ldap", ldap={"timeout": 4})

    inst = make_instance(db_engine, algorithm="ec-p256", overrides=ldap_directory)
    engine = engine_for(inst, clock)
    directory = inst.services.directory
    asking = threading.Event()
    real_find_user = directory.find_user

    def find_user(login: str) -> Any:
        asking.set()
        return real_find_user(login)

    directory.find_user = find_user
    with ThreadPoolExecutor(1) as pool, slapd.hung():  # the server answers again before the pool waits
        started = time.monotonic()
        issuance = pool.submit(engine.start, "certificate_issuance", actor="olga", role=RA,
                               context={"csr": csr_pem(), "profile": "smartcard_logon", "owner": "alice",
                                        "subject": ALICE})
        assert asking.wait(30), "the issuance never asked the directory"
        time.sleep(0.3)  # inside the lookup, which waits for the hung server
        writing = time.monotonic()
        with inst.services.db.begin() as conn:  # any writer: another request, the worker, the OCSP responder
            append_audit(conn, actor="test", event="test.write")
        waited = time.monotonic() - writing
        wf = issuance.result(timeout=60)
    assert time.monotonic() - started >= 4, "the lookup did not wait for the hung server"
    assert waited < 1.5, f"a writer waited {waited:.1f} s for the directory lookup"
    assert (wf.state, wf.proc_state) == ("CHECK", "retry")
    assert wf.last_error is not None and wf.last_error.startswith("directory.unavailable")


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_directory_outage_during_issuance_is_retried(make_instance: Callable[..., Any], db_engine: Engine,
                                                     clock: FakeClock, slapd: Any) -> None:
    # check_request reads the subject from the directory; one outage used to put the
    # request into "exception" (an operator's job) with a message about "several attempts".
    def ldap_directory(settings: dict[str, Any]) -> None:
        settings["directory"] = slapd.directory_settings("ldap")

    inst = make_instance(db_engine, algorithm="ec-p256", overrides=ldap_directory)
    engine = engine_for(inst, clock)
    slapd.stop()
    try:
        issuance = engine.start("certificate_issuance", actor="olga", role=RA,
                                context={"csr": csr_pem(), "profile": "smartcard_logon", "owner": "alice",
                                         "subject": ALICE})
        assert (issuance.state, issuance.proc_state, issuance.retry_count) == ("CHECK", "retry", 1)
        assert issuance.last_error is not None and issuance.last_error.startswith("directory.unavailable")
        assert issuance.last_error.endswith("(attempt 1 of 5)")
        clock.advance(3600)
        assert engine.resume_due() == 1  # still down: attempt 2
        assert engine.get(issuance.id).retry_count == 2
    finally:
        slapd.start()
    clock.advance(3600)
    assert engine.resume_due() == 1
    done = engine.get(issuance.id)
    assert (done.state, done.proc_state) == ("ISSUED", "finished")
    assert len(certificates(inst)) == 1
