#!/usr/bin/env python3
"""In-process certificate issuance rate against the raw signing rate of the same key.

    python bench/issue.py [--seconds 2] [--algorithm rsa-2048] [--threads 2] [--db sqlite|postgresql]

For the PKCS#11 key (a SoftHSM2 token made in a temp folder) and the
software key: certificates per second through
``CertificateAuthority.issue_certificate`` (CSR checks, profile, build, sign,
store in SQLite, audit row; one transaction per certificate), beside the raw
``sign`` rate of the same key measured in the same run.  The ratio
issuance/raw says how much of the time is the signature and how much is ours
(issue #15's target: >= 0.6).  Each rate is also given per CPU second of
the process (``time.process_time``: the calls into the token run on a
helper thread of the pool): on a machine shared with other work the
wall-clock rates swing with the load, the CPU-time ratio much less.  The
raw rate of the PKCS#11 key is the HSM's own, signing in a loop on one
session (``sign.session_sign_count``), without the pool's per-call hand-off
that the CA pays.
Then both again with ``--threads`` threads at once (wall clock): whether
issuance scales with threads as the HSM's own signing does.  On SQLite the
writers of a process take turns (the signature is inside the issuing
transaction), so threads scale there only as far as the work outside the
transaction allows; ``--db postgresql`` measures against a fresh database on
the local server instead.  Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openxpki_py_token.secret import SecretRef  # noqa: E402
from personalizing import temporary_postgresql  # noqa: E402
from sign import session_sign_count, softhsm_token  # noqa: E402

from openxpki_py.crypto.ca import CertificateAuthority, IssuanceRequest  # noqa: E402
from openxpki_py.crypto.keys import KeySpec  # noqa: E402
from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend  # noqa: E402
from openxpki_py.crypto.keys.software import SoftwareKeyBackend  # noqa: E402
from openxpki_py.crypto.profiles import ProfileSet  # noqa: E402
from openxpki_py.db.engine import create_schema, open_engine  # noqa: E402

ALICE = {"cn": "Alice Example", "mail": "alice@example.com", "upn": "alice@example.com"}


class _Cfg:
    """The slice of CAConfig the CA reads."""

    def __init__(self, algorithm: str) -> None:
        from types import SimpleNamespace

        self.key = SimpleNamespace(algorithm=algorithm)
        self.subject = "CN=Bench CA,O=Example"
        self.validity_days = 3650
        self.rsa_padding = "pkcs1v15"
        self.hash = "sha256"
        self.crl = SimpleNamespace(validity_hours=48, publish_dir=None, url="http://pki.example/crl/b.crl")
        self.issuer_url = "http://pki.example/crl/b.crt"
        self.ocsp = None


def make_csrs(n: int) -> list[bytes]:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench")])
    return [
        x509.CertificateSigningRequestBuilder().subject_name(name)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
        for _ in range(n)
    ]


def cpu_rate(measure: Any, *args: Any) -> tuple[float, float]:
    """(operations per wall second, per CPU second of the process) of ``measure(*args) -> (count, seconds)``.

    The process, not the thread: a signature through the pool runs on its helper thread.
    """
    cpu = time.process_time()
    count, seconds = measure(*args)
    return count / seconds, count / (time.process_time() - cpu)


def sign_count(key: Any, seconds: float) -> tuple[int, float]:
    """Raw PKCS#1 v1.5 / SHA-256 signatures in this thread (so its CPU time counts them)."""
    data = bytearray(b"bench " + bytes(200))
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        data[-8:] = done.to_bytes(8, "big")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            key.sign(bytes(data), ec.ECDSA(hashes.SHA256()))
        else:
            key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())
        done += 1
    return done, time.perf_counter() - start


def issuance_count(ca: CertificateAuthority, engine: Any, csrs: list[bytes], seconds: float) -> tuple[int, float]:
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and done < len(csrs):
        with engine.begin() as conn:
            ca.issue_certificate(conn, IssuanceRequest(csr=csrs[done], profile="smartcard_logon",
                                                      subject_attributes=ALICE, owner="alice",
                                                      requester="bench"))
        done += 1
    return done, time.perf_counter() - start


def threaded(n: int, measure: Any, args_of: Any) -> float:
    """Operations per wall second of ``n`` threads each running ``measure(*args_of(i)) -> (count, seconds)``."""
    counts = [0] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        counts[i] = measure(*args_of(i))[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=2.0, help="per figure (default 2)")
    parser.add_argument("--algorithm", default="rsa-2048", help="CA key: rsa-2048 (default), ec-p256 …")
    parser.add_argument("--threads", type=int, default=2, help="threads for the scaling figures (default 2)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args()
    spec = KeySpec.parse(args.algorithm)
    print(f"CPUs: {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; CA key {args.algorithm}; "
          f"{args.seconds:g} s per figure; issuance = checks + build + sign + {args.db} store + audit")
    csrs = make_csrs(int(args.seconds * 3000) * (1 + args.threads) + 100)
    print(f"{'backend':<9} {'raw sign':>10} {'issuance':>10} {'issue/raw':>10}   per CPU second: "
          f"{'raw sign':>10} {'issuance':>10} {'issue/raw':>10}")
    scaling: list[str] = []
    with contextlib.ExitStack() as stack:
        module, label, pin = stack.enter_context(softhsm_token())
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        password = Path(folder) / "password"
        password.write_text("bench", encoding="utf-8")
        backends = {
            "pkcs11": Pkcs11KeyBackend(module=module, token_label=label, key_label="bench-ca", pin=pin, spec=spec),
            "software": SoftwareKeyBackend(path=Path(folder) / "ca.pem",
                                           password=SecretRef("bench.password_file", file=password)),
        }
        offset = 0
        for name, backend in backends.items():
            url = (stack.enter_context(temporary_postgresql()) if args.db == "postgresql"
                   else f"sqlite:///{folder}/{name}.db")
            engine = open_engine(url)
            create_schema(engine)
            ca = CertificateAuthority(_Cfg(args.algorithm), ProfileSet.load(), backend)
            with engine.begin() as conn:
                ca.initialize(conn, actor="bench")
            key = backend.load_private_key()
            assert KeySpec.of(key) == spec
            sign_count(key, 0.2)
            # The HSM's own rate for the token's key (one session, no per-call hand-off); the key's for software.
            raw_count = ((lambda s, i=0: session_sign_count(backend, s, i)) if isinstance(backend, Pkcs11KeyBackend)
                         else (lambda s, i=0: sign_count(key, s)))
            raw, raw_cpu = cpu_rate(raw_count, args.seconds)
            rate, rate_cpu = cpu_rate(issuance_count, ca, engine, csrs[offset:], args.seconds)
            offset += int(rate * args.seconds) + 10
            print(f"{name:<9} {raw:>8.0f}/s {rate:>8.0f}/s {rate / raw:>10.2f}   {'':16}"
                  f"{raw_cpu:>8.0f}/s {rate_cpu:>8.0f}/s {rate_cpu / raw_cpu:>10.2f}")
            n = args.threads
            raw_n = threaded(n, raw_count, lambda i: (args.seconds, i))
            share = int(rate * args.seconds * 3) + 50  # CSRs per thread: a key is certified once
            rate_n = threaded(n, issuance_count,
                              lambda i: (ca, engine, csrs[offset + i * share:offset + (i + 1) * share], args.seconds))
            offset += n * share
            scaling.append(f"{name:<9} {n} threads: raw sign {raw_n:>6.0f}/s (x{raw_n / raw:.2f} of 1 thread), "
                           f"issuance {rate_n:>5.0f}/s (x{rate_n / rate:.2f}); issue/raw {rate_n / raw_n:.2f}")
            backend.close()
            engine.dispose()
    print("\n".join(scaling))


if __name__ == "__main__":
    main()
