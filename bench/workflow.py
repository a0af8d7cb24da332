#!/usr/bin/env python3
"""certificate_issuance workflows per second, beside in-process issuance.

    python bench/workflow.py [--seconds 3] [--algorithm rsa-2048] [--pg URL | --no-pg]

For SQLite (a WAL file) and PostgreSQL (a temporary database on the local
server), with the CA key in a SoftHSM2 token made in a temp folder:

- in-process: ``CertificateAuthority.issue_certificate`` in one transaction
  per certificate (CSR checks, build, sign, store, audit row);
- workflow: ``WorkflowEngine.start("certificate_issuance")`` run to ISSUED
  in the same call (start, check, issue: three transactions, each with its
  history and audit rows, context and search attributes).

The ratio workflow/in-process is the price of the engine.  Figures, not
pass/fail.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sign import softhsm_token  # noqa: E402

from openxpki_py.crypto.ca import CertificateAuthority, IssuanceRequest  # noqa: E402
from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend  # noqa: E402
from openxpki_py.crypto.profiles import ProfileSet  # noqa: E402
from openxpki_py.db.engine import create_schema, open_engine  # noqa: E402
from openxpki_py.domains import load_definitions  # noqa: E402
from openxpki_py.workflow import WorkflowEngine  # noqa: E402

ALICE = {"cn": "Alice Example", "mail": "alice@example.com", "upn": "alice@example.com"}
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432"


def ca_config(algorithm: str) -> Any:
    """The slice of CAConfig the CA reads."""
    return SimpleNamespace(
        key=SimpleNamespace(algorithm=algorithm), subject="CN=Bench CA,O=Example", validity_days=3650,
        rsa_padding="pkcs1v15", hash="sha256",
        crl=SimpleNamespace(validity_hours=48, publish_dir=None, url="http://pki.example/crl/b.crl"),
        issuer_url="http://pki.example/crl/b.crt",
    )


def make_csrs(n: int) -> list[str]:
    """Fresh keys: the CA refuses a public key it has certified before."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench")])
    return [
        x509.CertificateSigningRequestBuilder().subject_name(name)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM).decode()
        for _ in range(n)
    ]


def rate(run_one: Callable[[str], None], csrs: list[str], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and done < len(csrs):
        run_one(csrs.pop())
        done += 1
    return done / (time.perf_counter() - start)


def measure(db: Engine, ca: CertificateAuthority, csrs: list[str], seconds: float) -> tuple[float, float]:
    def in_process(csr: str) -> None:
        with db.begin() as conn:
            ca.issue_certificate(conn, IssuanceRequest(csr=csr.encode(), profile="smartcard_logon",
                                                      subject_attributes=ALICE, owner="alice", requester="bench"))

    engine = WorkflowEngine(db, load_definitions(), SimpleNamespace(ca=ca))

    def through_workflow(csr: str) -> None:
        view = engine.start("certificate_issuance", actor="bench", role="RA Operator",
                            context={"csr": csr, "profile": "smartcard_logon", "subject": ALICE, "owner": "alice"})
        assert view.state == "ISSUED", (view.state, view.last_error)

    for warm in (in_process, through_workflow):
        rate(warm, csrs, 0.3)
    return rate(in_process, csrs, seconds), rate(through_workflow, csrs, seconds)


def pg_database(server: str) -> tuple[str, Callable[[], None]] | None:
    name = f"oxp_bench_{secrets.token_hex(4)}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - a benchmark just reports it
        print(f"PostgreSQL at {server} not usable, skipped: {exc.__class__.__name__}")
        admin.dispose()
        return None

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return f"{server}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure (default 3)")
    parser.add_argument("--algorithm", default="rsa-2048", help="CA key: rsa-2048 (default), ec-p256 …")
    parser.add_argument("--pg", default=os.environ.get("OXP_BENCH_PG", PG_DEFAULT), help="PostgreSQL server URL")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    print(f"CPUs: {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; CA key {args.algorithm} in SoftHSM2; "
          f"{args.seconds:g} s per figure; one certificate per transaction / per workflow")
    csrs = make_csrs(int(args.seconds * 2 * 2500) + 500)
    print(f"{'database':<11} {'in-process':>11} {'workflow':>10} {'workflow/in-process':>20}")
    with softhsm_token() as (module, label, pin), tempfile.TemporaryDirectory() as folder:
        targets: list[tuple[str, str, Callable[[], None] | None]] = [("sqlite", f"sqlite:///{folder}/bench.db", None)]
        if not args.no_pg:
            pg = pg_database(args.pg)
            if pg is not None:
                targets.append(("postgresql", pg[0], pg[1]))
        for name, url, cleanup in targets:
            db = open_engine(url)
            backend = Pkcs11KeyBackend(module=module, token_label=label, key_label=f"bench-{name}", pin=pin)
            try:
                create_schema(db)
                ca = CertificateAuthority(ca_config(args.algorithm), ProfileSet.load(), backend)
                with db.begin() as conn:
                    ca.initialize(conn, actor="bench")
                plain, flow = measure(db, ca, csrs, args.seconds)
                print(f"{name:<11} {plain:>9.0f}/s {flow:>8.0f}/s {flow / plain:>20.2f}")
            finally:
                backend.close()
                db.dispose()
                if cleanup is not None:
                    cleanup()


if __name__ == "__main__":
    main()
