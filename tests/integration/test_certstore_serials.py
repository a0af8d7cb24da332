"""The certificate store's uniqueness, enforced by the database, on SQLite and on PostgreSQL.

The issuer+serial constraint is the serial check (no SELECT before the
insert): a repeated serial stores nothing and says so, and the transaction
goes on (the CA signs again with another serial).  A key certified twice is
still refused outright by its own constraint.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from openxpki_py.db import certstore
from openxpki_py.db.schema import certificate

ISSUER = "ab" * 20


def make_cert(serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "serial test")])
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))


def store(conn: Connection, cert: x509.Certificate, fingerprint: str) -> int | None:
    return certstore.store_certificate(conn, cert, issuer_key_identifier=ISSUER, fingerprint=fingerprint,
                                       profile="smartcard_logon", owner="alice")


def test_a_repeated_serial_stores_nothing_and_the_transaction_goes_on(db_engine: Engine) -> None:
    serial = certstore.random_serial()
    with db_engine.begin() as conn:
        first = store(conn, make_cert(serial), "1" * 64)
        assert first is not None
        assert store(conn, make_cert(serial), "2" * 64) is None  # same issuer and serial: skipped
        other = store(conn, make_cert(certstore.random_serial()), "2" * 64)  # still usable (PostgreSQL too)
        assert other is not None and other != first
    with db_engine.connect() as conn:
        rows = conn.execute(select(certificate.c.id, certificate.c.public_key_sha256)
                            .order_by(certificate.c.id)).all()
    assert [(r.id, r.public_key_sha256) for r in rows] == [(first, "1" * 64), (other, "2" * 64)]


def test_a_key_certified_twice_is_still_refused(db_engine: Engine) -> None:
    with db_engine.begin() as conn:
        assert store(conn, make_cert(certstore.random_serial()), "3" * 64) is not None
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        store(conn, make_cert(certstore.random_serial()), "3" * 64)
    with db_engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(certificate)).scalar_one() == 1
