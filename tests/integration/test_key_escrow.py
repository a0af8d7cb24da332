"""Escrowed encryption keys with real parts: the key-recovery key in SoftHSM, the real agent on a SoftHSM card.

The server is the project's WSGI app on a local plain-http server (as in
test_agent_card.py); the card is read back with pkcs11-tool and python-pkcs11,
and mail encrypted to the issued certificate with ``openssl cms -encrypt``
is opened with the card through OpenSSL's PKCS#11 engine (support/cms.py).
The Apache variant (SQLite and PostgreSQL, with the plaintext grep of a
database dump) is test_key_escrow_apache.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from pkcs11 import Attribute, Mechanism, ObjectClass
from sqlalchemy import select
from support.agent import PKCS11_TOOL, Browser, card_objects, printed_phrase, run_agent, serve_app
from support.cms import cms_decrypt_on_card, cms_encrypt
from support.pkix import assert_cert_lints_clean, assert_chain_lints_clean

from openxpki_py.db.schema import certificate, key_escrow
from openxpki_py.escrow.cli import init_escrow_key
from openxpki_py.errors import NotFound
from openxpki_py.escrow.custody import EscrowBlobRefused
from openxpki_py.escrow.recovery import (
    RecoveryNotCollectable,
    approve_recovery,
    collect_recovered_key,
    release_recovered_key,
    request_recovery,
)
from openxpki_py.workflow.errors import ActionNotAvailable, ActivityFailed, InputInvalid

ESCROWED = [
    {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
    {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt",
     "key_origin": "escrowed"},
]


def escrowed_settings(settings: dict[str, Any], *, key: str = "rsa-2048") -> None:
    """The shipped two types, encryption escrowed with ``key`` (rsa-2048, ec-p256, ec-p384)."""
    settings["personalization"] = {"certificates": [ESCROWED[0], {**ESCROWED[1], "key": key}]}


def escrow_issued(app: Any) -> tuple[Any, x509.Certificate, x509.Certificate]:
    """(the one escrow record, the encryption certificate, the CA certificate) of an agent server's instance."""
    with app.instance.services.db.connect() as conn:
        record = conn.execute(select(key_escrow)).mappings().one()
        cert = x509.load_der_x509_certificate(bytes(conn.execute(select(certificate.c.der).where(
            certificate.c.profile == "encryption")).scalar_one()))
        return record, cert, app.instance.services.ca.certificate(conn)


def on_card(token: Any, key_id: bytes, mail: Path, cert_pem: Path) -> bytes:
    """A mail program on the user's PC: the SoftHSM card's key decrypts through OpenSSL's PKCS#11 engine."""
    return cms_decrypt_on_card(mail, cert_pem, module=token.module, token_label=token.label, key_id=key_id,
                               pin=token.pin, env={"SOFTHSM2_CONF": str(token.softhsm.conf)})


@pytest.fixture
def escrow_instance(make_instance: Any, sqlite_engine: Any) -> Any:
    inst = make_instance(sqlite_engine, overrides=escrowed_settings)
    assert init_escrow_key(inst.services, only_if_needed=True)
    return inst


def test_the_key_recovery_key_never_leaves_the_hsm(escrow_instance: Any) -> None:
    custodian = escrow_instance.services.escrow.custodian
    flags = custodian.protection()
    assert flags["extractable"] is False and flags["never_extractable"] is True
    assert flags["sensitive"] is True and flags["always_sensitive"] is True and flags["local"] is True
    assert flags["wrap"] is False and flags["unwrap"] is False
    assert init_escrow_key(escrow_instance.services) is False  # never replaced
    # Read directly: the value cannot be read out (the backend's session logged the token in already).
    token = escrow_instance.ca_token
    lib = pkcs11.lib(str(token.module))
    with lib.get_token(token_label=token.label).open() as session:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label="ca-signing-escrow")
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]


def test_a_sealed_key_opens_only_for_its_own_record(escrow_instance: Any) -> None:
    custodian = escrow_instance.services.escrow.custodian
    nonce, blob = custodian.seal(b"secret key bytes", b"owner=alice")
    assert bytes(custodian.open(nonce, blob, b"owner=alice")) == b"secret key bytes"
    with pytest.raises(EscrowBlobRefused):
        custodian.open(nonce, blob, b"owner=mallory")  # moved to another record
    flipped = bytes([blob[0] ^ 1]) + blob[1:]
    with pytest.raises(EscrowBlobRefused):
        custodian.open(nonce, flipped, b"owner=alice")  # changed in the database


def _personalize(inst: Any, token: Any, state_dir: Path) -> tuple[int, str]:
    with serve_app(inst) as (app, url):
        browser = Browser(app)
        wf_id, code = browser.start()
        agent = run_agent(token, url, code, state_dir)
        browser.confirm_when_asked(wf_id, phrase=printed_phrase(agent))
        assert agent.stdout is not None and agent.stderr is not None
        with agent:
            err = agent.stderr.read()
            out = agent.stdout.read()
            agent.wait(timeout=120)
        assert agent.returncode == 0, err
        assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text
    return wf_id, out + err


def _card_private_key_flags(token: Any, key_id: bytes) -> dict[str, bool]:
    env = {"SOFTHSM2_CONF": str(token.softhsm.conf)}
    script = (
        "import pkcs11, sys\n"
        "from pkcs11 import Attribute, ObjectClass\n"
        f"lib = pkcs11.lib({str(token.module)!r})\n"
        f"with lib.get_token(token_label={token.label!r}).open(user_pin={token.pin!r}) as s:\n"
        f"    k = s.get_key(object_class=ObjectClass.PRIVATE_KEY, id={key_id!r})\n"
        "    print(k[Attribute.SENSITIVE], k[Attribute.EXTRACTABLE], k[Attribute.DECRYPT], k[Attribute.SIGN],\n"
        "          k[Attribute.DERIVE])\n"
    )
    import sys

    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                            text=True, check=True, timeout=60)
    sensitive, extractable, decrypt, sign, derive = (v == "True" for v in result.stdout.split())
    return {"sensitive": sensitive, "extractable": extractable, "decrypt": decrypt, "sign": sign, "derive": derive}


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_escrowed_encryption_key_on_the_card_and_recovered_by_two_officers(
        escrow_instance: Any, make_token: Any, tmp_path: Path, caplog: Any) -> None:
    inst = escrow_instance
    token = make_token("alice-card", pin="482913")
    wf_id, agent_output = _personalize(inst, token, tmp_path / "state")
    assert "escrowed key 2/2 (encryption) imported onto the card" in agent_output

    assert card_objects(token) == [("Certificate", "01"), ("Certificate", "02"), ("Private Key", "01"),
                                    ("Private Key", "02"), ("Public Key", "01"), ("Public Key", "02")]
    flags = _card_private_key_flags(token, b"\x02")
    assert flags == {"sensitive": True, "extractable": False, "decrypt": True, "sign": False, "derive": False}

    with inst.services.db.connect() as conn:
        record = conn.execute(select(key_escrow)).mappings().one()
        cert_row = conn.execute(select(certificate).where(certificate.c.profile == "encryption")).mappings().one()
    cert = x509.load_der_x509_certificate(bytes(cert_row["der"]))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert bytes(record["public_key_der"]) == spki  # the certificate is for the escrowed key
    assert record["status"] == "installed" and record["owner"] == "alice" and record["workflow_id"] == wf_id
    assert cert_row["key_origin"] == "server-escrowed"
    mail, cert_pem = cms_encrypt(cert, b"minutes of the board meeting", tmp_path)  # a colleague's S/MIME mail
    assert on_card(token, b"\x02", mail, cert_pem) == b"minutes of the board meeting"

    # Recovery: one officer alone gets nowhere; the same officer twice counts once; the owner never approves.
    engine = inst.services.workflows
    with pytest.raises(InputInvalid, match="reason"):
        request_recovery(engine, record["id"], reason="", actor="carol")  # no recovery without a reason
    own = request_recovery(engine, record["id"], reason="I lost my card", actor="alice")
    assert own.state == "REJECTED" and "recovery.own_key" in (own.last_error or str(own.context))
    recovery = request_recovery(engine, record["id"], reason="card lost, ticket 4711", actor="carol")
    assert recovery.state == "PENDING_APPROVAL"
    approve_recovery(engine, recovery.id, actor="carol")
    with pytest.raises(ActionNotAvailable):
        release_recovered_key(engine, recovery.id, actor="carol")
    with pytest.raises(ActivityFailed, match="approval.same_person"):
        approve_recovery(engine, recovery.id, actor="carol")
    with pytest.raises(ActivityFailed, match="recovery.own_key"):
        approve_recovery(engine, recovery.id, actor="alice")
    assert engine.get(recovery.id).state == "PENDING_APPROVAL"
    assert approve_recovery(engine, recovery.id, actor="dave").state == "APPROVED"
    released = release_recovered_key(engine, recovery.id, actor="dave")  # the officer receives no key
    assert released.state == "READY_FOR_OWNER" and "pkcs12" not in json.dumps(released.context)
    with pytest.raises(ActionNotAvailable):
        release_recovered_key(engine, recovery.id, actor="dave")  # released once only
    with pytest.raises(NotFound):
        collect_recovered_key(engine, recovery.id, login="dave")  # only the owner collects
    with pytest.raises(ActivityFailed, match="recovery.collect_on_the_web"):  # not by a generic execute:
        engine.execute(recovery.id, "collect", actor="alice", role="User")  # nobody would receive it
    assert engine.get(recovery.id).state == "READY_FOR_OWNER"
    collected = collect_recovered_key(engine, recovery.id, login="alice")
    assert collected.owner == "alice" and len(collected.password) == 29
    key, p12_cert, _ = pkcs12.load_key_and_certificates(collected.pkcs12, collected.password.encode())
    assert isinstance(key, rsa.RSAPrivateKey) and p12_cert == cert
    assert key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) == spki
    # The recovered key opens what was encrypted to the certificate (as the card does).
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    assert key.decrypt(cert.public_key().encrypt(b"old mail", oaep), oaep) == b"old mail"  # type: ignore[union-attr]
    with pytest.raises(RecoveryNotCollectable, match="collected this key already"):
        collect_recovered_key(engine, recovery.id, login="alice")  # collected once only

    # The plaintext key is nowhere: not in the database (blobs and context), not in the logs or the agent's output.
    secrets = key_forms(key)
    dump = "\n".join(_sqlite_dump(inst))
    logs = caplog.text + agent_output
    for name, form in secrets.items():
        assert form not in dump, f"the private key ({name}) is in the database"
        assert form not in logs, f"the private key ({name}) is in a log"
    assert collected.password not in dump and collected.password not in caplog.text


def key_forms(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """The ways a private key could be written down: PKCS#8 DER (hex), PEM body, the private exponent or scalar.

    Hex both ways round: SQLite's dump writes blobs as X'…' in upper case, pg_dump as \\x… in lower case.
    """
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    d = key.private_numbers().d if isinstance(key, rsa.RSAPrivateKey) else key.private_numbers().private_value
    d_bytes = d.to_bytes((d.bit_length() + 7) // 8, "big")
    return {"pkcs8-hex": der.hex()[64:192], "pkcs8-hex-upper": der.hex()[64:192].upper(),
            "pem": pem.splitlines()[3], "d-hex": d_bytes.hex()[:64], "d-HEX": d_bytes.hex()[:64].upper(),
            "d-decimal": str(d)[:40]}


def _sqlite_dump(inst: Any) -> list[str]:
    import sqlite3

    path = inst.services.db.url.database
    with sqlite3.connect(path) as conn:
        return list(conn.iterdump())


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_lost_card_replacement_card_gets_the_key_history_and_opens_old_mail(
        escrow_instance: Any, make_token: Any, tmp_path: Path) -> None:
    from openxpki_py.console.cards import transition

    inst = escrow_instance
    first = make_token("alice-card-1", pin="482913")
    _personalize(inst, first, tmp_path / "state-1")
    with inst.services.db.connect() as conn:
        old_cert = x509.load_der_x509_certificate(bytes(conn.execute(select(certificate.c.der).where(
            certificate.c.profile == "encryption")).scalar_one()))
    mail, cert_pem = cms_encrypt(old_cert, b"mail from last year", tmp_path)

    # Card 1 is lost: its certificates are revoked; card 2 gets a new escrowed key and the old one.
    svc = inst.services
    with svc.db.connect() as conn:
        serial = conn.execute(select(certificate.c.token_id)).scalars().first()
        from openxpki_py.db.schema import token as token_table

        card_serial = conn.execute(select(token_table.c.serial).where(token_table.c.id == serial)).scalar_one()
    assert transition(svc.db, svc.ca, svc.config.cards.lifecycle, card_serial, "lost", actor="helpdesk",
                      role="RA Operator", workflows=svc.workflows).certificates
    second = make_token("alice-card-2", pin="482913")
    _, output = _personalize(inst, second, tmp_path / "state-2")
    assert f"earlier key 1 (certificate {old_cert.serial_number:x}" in output, output
    assert ("Private Key", "0281") in card_objects(second) and ("Certificate", "0281") in card_objects(second)
    assert _card_private_key_flags(second, b"\x02\x81") == {"sensitive": True, "extractable": False,
                                                             "decrypt": True, "sign": False, "derive": False}
    assert on_card(second, b"\x02\x81", mail, cert_pem) == b"mail from last year"
    with inst.services.db.connect() as conn:
        records = conn.execute(select(key_escrow).order_by(key_escrow.c.id)).mappings().all()
    assert [r["status"] for r in records] == ["installed", "installed"]
    assert records[0]["public_key_sha256"] != records[1]["public_key_sha256"]  # a new key for the new card


def test_escrowed_ec_key_is_proved_by_ecdh_on_the_card_and_opens_ecdh_mail(
        make_instance: Any, sqlite_engine: Any, make_token: Any, tmp_path: Path, caplog: Any) -> None:
    """P-256: generated on the server, imported as a key-agreement key, proved by ECDH, opens kari S/MIME."""
    inst = make_instance(sqlite_engine, overrides=lambda s: escrowed_settings(s, key="ec-p256"))
    assert init_escrow_key(inst.services, only_if_needed=True)
    token = make_token("alice-card", pin="482913")
    _, output = _personalize(inst, token, tmp_path / "state")
    assert "escrowed key 2/2 (encryption) imported onto the card" in output, output
    assert _card_private_key_flags(token, b"\x02") == {"sensitive": True, "extractable": False, "decrypt": False,
                                                      "sign": False, "derive": True}
    with inst.services.db.connect() as conn:
        record = conn.execute(select(key_escrow)).mappings().one()
        cert = x509.load_der_x509_certificate(bytes(conn.execute(select(certificate.c.der).where(
            certificate.c.profile == "encryption")).scalar_one()))
        ca_cert = inst.services.ca.certificate(conn)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    assert record["key_spec"] == "ec-p256" and record["status"] == "installed"  # the ECDH proof counted
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_agreement and not usage.key_encipherment and not usage.digital_signature
    assert_cert_lints_clean(cert, tmp_path)
    assert_chain_lints_clean(ca_cert, cert, tmp_path)
    mail, cert_pem = cms_encrypt(cert, b"the EC way: ECDH key agreement", tmp_path)
    assert on_card(token, b"\x02", mail, cert_pem) == b"the EC way: ECDH key agreement"

    # The private scalar is nowhere in clear: opened here in the HSM only to know what to look for.
    key = serialization.load_der_private_key(bytes(inst.services.escrow._private_key(record)), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.public_key() == public
    dump, logs = "\n".join(_sqlite_dump(inst)), caplog.text + output
    for name, form in key_forms(key).items():
        assert form not in dump, f"the private key ({name}) is in the database"
        assert form not in logs, f"the private key ({name}) is in a log"
