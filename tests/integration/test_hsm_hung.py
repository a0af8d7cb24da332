"""An HSM that stops answering in the middle of an issuance (SoftHSM blocked inside C_Sign).

PKCS#11 has no timeouts: a C_Sign to a network HSM whose connection hangs
waits for as long as the vendor's library likes.  SoftHSM is made to wait
inside C_Sign for its objects' file locks, held by another process
(``SoftHSMToken.hung``).  The issuance's request
waited with it, holding its transaction — on SQLite the database's one
write lock, so every other writer waited too, for ever.  Now a call into
the token is made on a helper thread and the request gives up after
``ca.key.timeout`` seconds: the issuance is retried later, its transaction
rolls back, the writers go on, and the hung call ends by itself once the
HSM answers again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from data.workflow.activities_for_tests import FakeClock, load_test_definitions
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from openxpki_py.audit import append_audit
from openxpki_py.db.schema import certificate
from openxpki_py.workflow import WorkflowEngine

TIMEOUT = 2
ALICE = {"cn": "Alice Example", "mail": "alice@example.com", "upn": "alice@example.com"}


def csr_pem() -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ignored")]))
    key = ec.generate_private_key(ec.SECP256R1())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize("db_engine", ["sqlite"], indirect=True)
def test_a_hung_hsm_holds_the_request_and_the_writers_only_for_ca_key_timeout(
        make_instance: Callable[..., Any], db_engine: Engine) -> None:
    def short_timeout(settings: dict[str, Any]) -> None:
        settings["ca"]["key"]["timeout"] = TIMEOUT

    inst = make_instance(db_engine, algorithm="ec-p256", overrides=short_timeout)
    clock = FakeClock()
    engine = WorkflowEngine(inst.services.db, load_test_definitions(include_shipped=True), inst.services,
                            clock=clock)
    request = {"csr": csr_pem(), "profile": "smartcard_logon", "owner": "alice", "subject": ALICE}
    assert engine.start("certificate_issuance", actor="olga", role="RA Operator", context=request).state == "ISSUED"

    ca = inst.services.ca
    signing = threading.Event()
    sign = ca._sign

    def marked_sign(*args: Any) -> Any:
        signing.set()
        return sign(*args)

    ca._sign = marked_sign

    def write() -> float:
        started = time.monotonic()
        with inst.services.db.begin() as conn:  # another request, the worker, the OCSP responder …
            append_audit(conn, actor="test", event="test.write")
        return time.monotonic() - started

    with ThreadPoolExecutor(2) as pool, inst.ca_token.hung():
        started = time.monotonic()
        issuance = pool.submit(engine.start, "certificate_issuance", actor="olga", role="RA Operator",
                               context={**request, "csr": csr_pem()})
        assert signing.wait(30), "the issuance never reached the signature"
        writer = pool.submit(write)
        wf = issuance.result(timeout=TIMEOUT + 15)  # before: for as long as the HSM hangs
        answered = time.monotonic() - started
        waited = writer.result(timeout=TIMEOUT + 15)
        # While that call has not returned, the next issuance fails at once instead of waiting again.
        started = time.monotonic()
        second = engine.start("certificate_issuance", actor="olga", role="RA Operator",
                              context={**request, "csr": csr_pem()})
        failed_fast = time.monotonic() - started
    assert answered < TIMEOUT + 5, f"the request waited {answered:.1f} s"
    assert waited < TIMEOUT + 5, f"another writer waited {waited:.1f} s"
    assert (wf.state, wf.proc_state) == ("ISSUE", "retry")
    assert wf.last_error is not None and f"did not answer within {TIMEOUT} s" in wf.last_error
    assert failed_fast < TIMEOUT, f"the next issuance waited {failed_fast:.1f} s for the hung HSM"
    assert (second.state, second.proc_state) == ("ISSUE", "retry")
    assert second.last_error is not None and "has not returned for" in second.last_error

    # The HSM answers again: the hung call returned on its own; the retry issues.
    deadline = time.monotonic() + 30
    while inst.services.ca.key_backend._session_pool()._courier.overdue and time.monotonic() < deadline:
        time.sleep(0.05)
    clock.advance(3600)
    assert engine.resume_due() == 2
    for issued in (wf, second):
        done = engine.get(issued.id)
        assert (done.state, done.proc_state) == ("ISSUED", "finished")
    with inst.services.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(certificate)).scalar() == 3
