#!/usr/bin/env python3
"""The outside baseline: cfssl's sign API with a software RSA-2048 CA key.

    python bench/cfssl.py [--seconds 3] [--workers 1 4]

``cfssl_server`` starts ``cfssl serve`` (Debian ``golang-cfssl``;
``contrib/install/debian-deps.sh --with-bench``) on a freshly generated
RSA-2048 CA in a temp folder; ``cfssl_sign_rate`` posts CSRs to
``/api/v1/cfssl/sign`` from client threads and returns certificates per
second.  cfssl checks the CSR's signature, builds and signs the
certificate and answers it; it keeps no database, audit trail or
workflow, so it is the price of "sign an X.509 certificate over HTTP" on
this machine.  The personalization benchmark measures it in the same run
and prints its ratio.  Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

CFSSL = "cfssl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_ca(folder: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "cfssl bench CA")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@contextlib.contextmanager
def cfssl_server() -> Iterator[int]:
    """``cfssl serve`` on a new software RSA-2048 CA; yields its port."""
    if shutil.which(CFSSL) is None:
        raise SystemExit("cfssl is not installed: apt-get install golang-cfssl "
                         "(contrib/install/debian-deps.sh --with-bench)")
    folder = Path(tempfile.mkdtemp(prefix="openxpki-bench-cfssl-"))
    port = _free_port()
    cert, key = _write_ca(folder)
    process = subprocess.Popen([CFSSL, "serve", "-address", "127.0.0.1", "-port", str(port), "-ca", str(cert),
                                "-ca-key", str(key), "-loglevel", "4"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("cfssl serve did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def bench_csrs(n: int) -> list[str]:
    """PEM CSRs (P-256: cheap to make; the CA's RSA-2048 signature is what is measured)."""
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench")])
    return [x509.CertificateSigningRequestBuilder().subject_name(name)
            .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM).decode() for _ in range(n)]


def cfssl_sign_rate(port: int, csrs: Sequence[str], seconds: float, workers: int) -> float:
    """Certificates per second from ``workers`` client threads (a keep-alive connection each)."""
    counts = [0] * workers
    barrier = threading.Barrier(workers + 1)

    def work(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            body = json.dumps({"certificate_request": csrs[(index + n * workers) % len(csrs)]})
            conn.request("POST", "/api/v1/cfssl/sign", body=body, headers={"Content-Type": "application/json"})
            answer = json.loads(conn.getresponse().read())
            assert answer.get("success") and "BEGIN CERTIFICATE" in answer["result"]["certificate"], answer
            n += 1
        counts[index] = n
        conn.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    csrs = bench_csrs(200)
    print(f"CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; cfssl serve, software RSA-2048 CA")
    with cfssl_server() as port:
        cfssl_sign_rate(port, csrs, 0.3, 1)
        for workers in args.workers:
            print(f"{workers} client workers: {cfssl_sign_rate(port, csrs, args.seconds, workers):.0f} certificates/s")


if __name__ == "__main__":
    main()
