#!/usr/bin/env python3
"""OCSP answers per second against the raw signing rate of the responder's key.

    python bench/ocsp.py [--seconds 2] [--algorithm rsa-2048]

A SoftHSM2 token holds the CA key and the responder's delegated key; 200
certificates are issued into SQLite (a quarter revoked).  Figure one: the raw
``sign`` rate of the responder key on one thread.  Figure two:
``OcspResponder.respond`` — parse the request, check the issuer, look the
serial up in the store, build, sign in the HSM, encode — on one thread.  The
ratio respond/raw says how much of an answer is the signature.  Figures, not
pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from issue import ALICE, _Cfg, make_csrs  # noqa: E402
from sign import raw_sign_rate, softhsm_token  # noqa: E402

from openxpki_py.config import OcspConfig  # noqa: E402
from openxpki_py.crypto.ca import CertificateAuthority, IssuanceRequest  # noqa: E402
from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend  # noqa: E402
from openxpki_py.crypto.ocsp import OcspResponder  # noqa: E402
from openxpki_py.crypto.profiles import ProfileSet  # noqa: E402
from openxpki_py.db.engine import create_schema, open_engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seconds", type=float, default=2.0, help="per figure (default 2)")
    parser.add_argument("--algorithm", default="rsa-2048", help="CA and responder key (default rsa-2048)")
    args = parser.parse_args()
    print(f"CPUs: {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; keys {args.algorithm} in SoftHSM2; "
          f"{args.seconds:g} s per figure")
    with softhsm_token() as (module, label, pin), tempfile.TemporaryDirectory() as folder:
        engine = open_engine(f"sqlite:///{folder}/ocsp.db")
        create_schema(engine)
        cfg = _Cfg(args.algorithm)
        ca = CertificateAuthority(cfg, ProfileSet.load(), Pkcs11KeyBackend(
            module=module, token_label=label, key_label="bench-ca", pin=pin))
        with engine.begin() as conn:
            ca_cert = ca.initialize(conn, actor="bench")
        assert isinstance(ca_cert, x509.Certificate)
        responder = OcspResponder(ca, OcspConfig(url="http://pki.example/ocsp"), engine, lambda n: Pkcs11KeyBackend(
            module=module, token_label=label, key_label=f"bench-ocsp-{n}", pin=pin))
        responder.create_key(actor="bench")
        issued = []
        for csr in make_csrs(200):
            with engine.begin() as conn:
                issued.append(ca.issue_certificate(conn, IssuanceRequest(
                    csr=csr, profile="smartcard_logon", subject_attributes=ALICE, owner="alice",
                    requester="bench")).certificate)
        with engine.begin() as conn:
            for cert in issued[::4]:
                ca.revoke_certificate(conn, cert.serial_number, "keyCompromise", actor="bench")
        requests = [ocsp.OCSPRequestBuilder().add_certificate(c, ca_cert, hashes.SHA1()).build()
                    .public_bytes(serialization.Encoding.DER) for c in issued]
        key = responder.signer().key
        raw_sign_rate(key, 0.2)
        raw = raw_sign_rate(key, args.seconds)
        rng = random.Random(1)
        for _ in range(20):  # warm: responder certificate loaded, statements compiled
            responder.respond(rng.choice(requests))
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            answer = ocsp.load_der_ocsp_response(responder.respond(requests[done % len(requests)]))
            assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            done += 1
        rate = done / (time.perf_counter() - start)
        print(f"{'raw sign':>10} {'answers':>10} {'answers/raw':>12}")
        print(f"{raw:>8.0f}/s {rate:>8.0f}/s {rate / raw:>12.2f}")
        responder.close()
        ca.key_backend.close()
        engine.dispose()


if __name__ == "__main__":
    main()
