#!/usr/bin/env python3
"""Raw signing rate of the CA key backends: PKCS#11 (SoftHSM2) vs software.

    python bench/sign.py [--seconds 1] [--repeat 3]

Creates a SoftHSM2 token in a temp folder, generates RSA-2048 and P-256 keys
in it and in software, and prints signatures per second on 1 and 2 threads
with ratios.  For the token two figures: the HSM's own rate (``session``:
signing in a loop on one session, python-pkcs11 straight) and the CA's
path (``pkcs11``: each signature through the session pool and its helper
thread, which bounds how long a request waits for a hung HSM).  Figures,
not pass/fail.  ``raw_sign_rate``, ``session_sign_count`` and
``softhsm_token`` are reusable (``bench/issue.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from openxpki_py_token.secret import SecretRef
from pkcs11 import Mechanism, ObjectClass

from openxpki_py.crypto.keys import KeySpec
from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend
from openxpki_py.crypto.keys.software import SoftwareKeyBackend

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


def raw_sign_rate(private_key: Any, seconds: float = 2.0, threads: int = 1) -> float:
    """Signatures per second (all threads together) of ``private_key.sign``.

    RSA signs PKCS#1 v1.5 with SHA-256, EC signs ECDSA with SHA-256; each
    thread signs different data for ``seconds``.
    """
    counts = [0] * threads
    start = threading.Barrier(threads + 1)

    def work(index: int) -> None:
        data = bytearray(f"bench {index} ".encode() + bytes(200))
        start.wait()
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            data[-8:] = n.to_bytes(8, "big")
            if isinstance(private_key, rsa.RSAPrivateKey):
                private_key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(private_key, ec.EllipticCurvePrivateKey):
                private_key.sign(bytes(data), ec.ECDSA(hashes.SHA256()))
            else:
                raise TypeError(f"cannot benchmark {type(private_key).__name__}")
            n += 1
        counts[index] = n

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)


def session_sign_count(backend: Pkcs11KeyBackend, seconds: float, index: int = 0) -> tuple[int, float]:
    """(signatures, seconds) signing in a loop on one of the pool's sessions: the HSM's own rate.

    One hand-off for the whole loop, so no per-signature cost of ours is
    in it: the baseline the CA's path is compared with.
    """
    def operation(pooled: Any) -> tuple[int, float]:
        key = backend.ref.find(pooled.session, ObjectClass.PRIVATE_KEY)[0]
        rsa_key = backend.spec is None or backend.spec.algorithm == "rsa"
        data = bytearray(f"bench {index} ".encode() + bytes(200))
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            data[-8:] = done.to_bytes(8, "big")
            if rsa_key:
                key.sign(bytes(data), mechanism=Mechanism.SHA256_RSA_PKCS)
            else:  # SoftHSM offers ECDSA over a digest only, as the CA's EC signer uses it
                key.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
            done += 1
        return done, time.perf_counter() - start

    return backend._run(operation)  # type: ignore[no-any-return]


def session_sign_rate(backend: Pkcs11KeyBackend, seconds: float = 2.0, threads: int = 1) -> float:
    """:func:`session_sign_count` on ``threads`` threads at once, signatures per second together."""
    counts: list[tuple[int, float]] = [(0, 1.0)] * threads

    def work(index: int) -> None:
        counts[index] = session_sign_count(backend, seconds, index)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(n / t for n, t in counts)


@contextlib.contextmanager
def softhsm_token(label: str = "bench-ca", pin: str = "1234") -> Iterator[tuple[Path, str, SecretRef]]:
    """A fresh SoftHSM2 token in a temp folder: (module, token label, PIN ref).

    Sets SOFTHSM2_CONF for this process; call before the module is first loaded.
    """
    base = Path(tempfile.mkdtemp(prefix="openxpki-bench-"))
    try:
        (base / "tokens").mkdir()
        conf = base / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {base / 'tokens'}\nobjectstore.backend = file\n"
                        "log.level = ERROR\n", encoding="utf-8")
        os.environ["SOFTHSM2_CONF"] = str(conf)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin",
                        "12345678", "--pin", pin], check=True, capture_output=True)
        pin_file = base / "pin"
        pin_file.write_text(pin, encoding="utf-8")
        pin_file.chmod(0o600)
        yield SOFTHSM_MODULE, label, SecretRef("bench.pin_file", file=pin_file)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=1.0, help="per run (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown")
    args = parser.parse_args()

    def rate(key: Any, threads: int) -> float:
        return statistics.median(raw_sign_rate(key, args.seconds, threads) for _ in range(args.repeat))

    print(f"CPUs: {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; median of {args.repeat} x "
          f"{args.seconds:g} s per figure; PKCS#1 v1.5 / ECDSA with SHA-256")
    print(f"{'key':<9} {'backend':<9} {'1 thread':>10} {'2 threads':>10} {'2t/1t':>6}")
    rows: dict[tuple[str, str], tuple[float, float]] = {}
    with softhsm_token() as (module, label, pin), tempfile.TemporaryDirectory() as folder:
        for name in ("rsa-2048", "ec-p256"):
            spec = KeySpec.parse(name)
            password = Path(folder) / "password"
            password.write_text("bench", encoding="utf-8")
            software = SoftwareKeyBackend(path=Path(folder) / f"{name}.pem",
                                          password=SecretRef("bench.password_file", file=password))
            with Pkcs11KeyBackend(module=module, token_label=label, key_label=name, pin=pin, spec=spec) as hsm:
                for backend_name, backend in (("pkcs11", hsm), ("software", software)):
                    key = backend.generate_private_key(spec)
                    raw_sign_rate(key, 0.2)  # warm up: login, sessions, caches
                    one, two = rate(key, 1), rate(key, 2)
                    rows[name, backend_name] = (one, two)
                    print(f"{name:<9} {backend_name:<9} {one:>8.0f}/s {two:>8.0f}/s {two / one:>6.2f}")
                    if backend is hsm:
                        one_s, two_s = (statistics.median(session_sign_rate(hsm, args.seconds, n)
                                                          for _ in range(args.repeat)) for n in (1, 2))
                        rows[name, "session"] = (one_s, two_s)
                        print(f"{name:<9} {'session':<9} {one_s:>8.0f}/s {two_s:>8.0f}/s {two_s / one_s:>6.2f}")
    for name in ("rsa-2048", "ec-p256"):
        (h1, h2), (s1, s2), (r1, r2) = rows[name, "pkcs11"], rows[name, "software"], rows[name, "session"]
        print(f"{name}: pkcs11/software = {h1 / s1:.2f} (1 thread), {h2 / s2:.2f} (2 threads); "
              f"the CA's path / the HSM's own rate = {h1 / r1:.2f} (1 thread), {h2 / r2:.2f} (2 threads)")


if __name__ == "__main__":
    main()
