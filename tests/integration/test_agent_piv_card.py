"""The agent personalizes a PIV card through the real smartcard stack.

pcscd + vpcd + the project's software PIV card (``support/virtual_piv.py``);
the agent takes its PIV route (yubikit over pyscard, the ``[piv]`` extra)
and the result is checked as a user's application sees it, through OpenSC's
PKCS#11 module (where PIV slot 9a is ID 01 and 9d is ID 03).
"""

from __future__ import annotations

import datetime
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from support.agent import Browser, run_agent, run_agent_on_card
from support.smartcards import OPENSC_MODULE, VirtualCardProcess

from openxpki_py.db.schema import certificate, workflow

pytestmark = pytest.mark.slow
yubikit = pytest.importorskip("yubikit.piv", reason="the agent's [piv] extra is not installed")

POLICY = [
    {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
    {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt"},
]
# The per-card-type policy: on PIV cards the encryption key is P-256; other cards keep RSA-2048.
CARD_TYPES = {"piv": {"key": {"encryption": "ec-p256"}}, "openpgp": {"types": ["authentication"]}}


def _policy(settings: dict[str, Any]) -> None:
    settings["personalization"] = {"certificates": POLICY, "card_types": CARD_TYPES}


def _key_types(pin: str) -> dict[str, str]:
    """Key type per PKCS#11 ID of the private keys on the card, as OpenSC lists them (``{"01": "RSA"}``)."""
    listing = _pkcs11_tool("--login", "--pin", pin, "--list-objects", "--type", "privkey").decode()
    types: dict[str, str] = {}
    kind = ""
    for line in listing.splitlines():
        if line.startswith("Private Key Object;"):
            kind = line.split(";", 1)[1].strip().split()[0]
        elif line.strip().startswith("ID:") and kind:
            types[line.split(":", 1)[1].strip()] = kind
    return types


def _pkcs11_tool(*args: str) -> bytes:
    return subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), *args],
                          capture_output=True, timeout=60, check=True).stdout


def _token_serial() -> str:
    listing = _pkcs11_tool("--list-token-slots").decode()
    return next(line.split(":", 1)[1].strip() for line in listing.splitlines() if "serial num" in line)


def _issued(app: Any) -> dict[str, x509.Certificate]:
    """Issued certificates by type (the logon one carries the smartcard-logon EKU)."""
    with app.instance.services.db.connect() as conn:
        certs = [x509.load_der_x509_certificate(bytes(r.der)) for r in conn.execute(select(certificate.c.der))]
    by_type = {}
    for cert in certs:
        logon = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.2") in cert.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value
        by_type["authentication" if logon else "encryption"] = cert
    return by_type


def test_piv_card_gets_two_certificates_and_a_new_chuid(make_agent_server: Callable[..., tuple[Any, str]],
                                                         piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(_policy)
    assert _token_serial() == "00000000"  # OpenSC's serial is the CHUID GUID; a new card has none
    browser = Browser(app)
    wf_id, code = browser.start()
    escrow = tmp_path / "management-key.hex"
    agent = run_agent_on_card(piv_card, url, code, tmp_path / "state", "--rotate-management-key", str(escrow))
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "PIV card" in err and "done: 2 certificates on the card" in err, err
    assert "new CHUID and CCC written" in err and str(escrow) in err
    assert piv_card.pin not in out + err
    issued = _issued(app)
    assert isinstance(issued["authentication"].public_key(), rsa.RSAPublicKey)
    assert isinstance(issued["encryption"].public_key(), ec.EllipticCurvePublicKey)

    # CHUID set and unique: OpenSC's token serial is now its GUID.
    assert _token_serial() not in ("00000000", "")

    # Through OpenSC's PKCS#11: certificates back byte for byte, keys listed next to them.
    assert x509.load_der_x509_certificate(_pkcs11_tool("--read-object", "--type", "cert", "--id", "01")) \
        == issued["authentication"]
    assert x509.load_der_x509_certificate(_pkcs11_tool("--read-object", "--type", "cert", "--id", "03")) \
        == issued["encryption"]
    listing = _pkcs11_tool("--login", "--pin", piv_card.pin, "--list-objects").decode()
    assert listing.count("Private Key Object") == 2, listing
    # The keys the PIV card-type policy chose: RSA in 9a (ID 01), P-256 in 9d (ID 03).
    assert _key_types(piv_card.pin) == {"01": "RSA", "03": "EC"}, listing
    wf = app.instance.services.workflows.get(wf_id)
    assert wf.context["card_plan"]["policy"] == "piv"

    # A signature with the 9a key, made through OpenSC, verifies with the issued certificate.
    data = tmp_path / "data.bin"
    data.write_bytes(b"logon challenge")
    sig = tmp_path / "data.sig"
    _pkcs11_tool("--login", "--pin", piv_card.pin, "--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", "01",
                 "--input-file", str(data), "--output-file", str(sig))
    public = issued["authentication"].public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(sig.read_bytes(), data.read_bytes(), padding.PKCS1v15(), hashes.SHA256())

    # The keys were generated on the card (the card attests them), and the
    # card now answers only to the escrowed management key.
    assert stat.S_IMODE(escrow.stat().st_mode) == 0o600
    _check_on_card(bytes.fromhex(escrow.read_text()), issued, piv_card)


def test_piv_card_type_policy_choosing_ec_for_logon_is_honoured(
        make_agent_server: Callable[..., tuple[Any, str]], piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    """EC P-256 where TLS 1.3 matters: the PIV policy gives the logon key P-256; the configured type says RSA."""
    app, url = make_agent_server(lambda s: s.update(personalization={
        "certificates": POLICY[:1], "card_types": {"piv": {"key": {"authentication": "ec-p256"}}}}))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(piv_card, url, code, tmp_path / "state")
    page, _ = browser.phrase_when_asked(wf_id)
    assert "authentication certificate, ec-p256 key made on the card" in page, page
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "generating key 1/1 (authentication, EC P-256)" in err, err
    assert isinstance(_issued(app)["authentication"].public_key(), ec.EllipticCurvePublicKey)
    assert _key_types(piv_card.pin) == {"01": "EC"}


def test_piv_factory_management_key_is_not_kept_silently(make_agent_server: Callable[..., tuple[Any, str]],
                                                          make_piv_card: Callable[..., VirtualCardProcess],
                                                          tmp_path: Path) -> None:
    """A card with AES-192 management key (YubiKey 5.7): works, and the agent warns about the factory key."""
    card = make_piv_card("--firmware", "5.7.1")
    app, url = make_agent_server(lambda s: s.update(personalization={"certificates": POLICY[:1]}))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(card, url, code, tmp_path / "state", "--card-profile", "piv")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "factory PIV management key" in err and "--rotate-management-key" in err, err


def _check_on_card(management_key: bytes, issued: dict[str, x509.Certificate], card: VirtualCardProcess) -> None:
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import SLOT, PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        piv = PivSession(connection)
        piv.authenticate(management_key)
        root = x509.load_pem_x509_certificate(card.extra["attestation_root"].read_bytes())
        device_ca = piv.get_certificate(SLOT.ATTESTATION)
        device_ca.verify_directly_issued_by(root)
        for slot, cert_type in ((SLOT.AUTHENTICATION, "authentication"), (SLOT.KEY_MANAGEMENT, "encryption")):
            assert piv.get_slot_metadata(slot).generated
            attestation = piv.attest_key(slot)
            attestation.verify_directly_issued_by(device_ca)
            assert attestation.public_key() == issued[cert_type].public_key()


# --- per-card admin credentials (card_admin, docs/cards.md) -----------------------------------


def _with_card_admin(settings: dict[str, Any]) -> None:
    settings["personalization"] = {"certificates": POLICY[:1]}
    settings["card_admin"] = {"enabled": True}


def _personalize(app: Any, url: str, card: VirtualCardProcess, state: Path, *options: str) -> tuple[int, str, str]:
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(card, url, code, state, "--card-profile", "piv", "-v", *options)
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    return agent.returncode, out, err


def _card_admin_state() -> tuple[bool, bool, Any]:
    """(management key is the factory one, PUK is the factory one, the card's YubiKey serial)."""
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        piv = PivSession(connection)
        return (piv.get_management_key_metadata().default_value, piv.get_puk_metadata().default_value,
                piv.get_serial())


def _authenticates(key: bytes) -> bool:
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import ApduError, SmartCardConnection
    from yubikit.piv import PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        try:
            PivSession(connection).authenticate(key)
        except (ApduError, ValueError):
            return False
        return True


@pytest.mark.parametrize("firmware", ["5.4.3", "5.7.1"])  # 3DES factory key, AES-192 factory key
def test_server_derived_admin_credentials_replace_the_factory_ones(
        make_agent_server: Callable[..., tuple[Any, str]], make_piv_card: Callable[..., VirtualCardProcess],
        tmp_path: Path, caplog: pytest.LogCaptureFixture, firmware: str) -> None:
    """First run: factory management key and PUK -> derived; second run on the same card uses them."""
    import logging

    from yubikit.piv import PivSession  # noqa: F401 - the [piv] extra is present (module skip above)

    caplog.set_level(logging.DEBUG)
    card = make_piv_card("--firmware", firmware)
    app, url = make_agent_server(_with_card_admin)
    code, out, err = _personalize(app, url, card, tmp_path / "state")
    assert code == 0, err
    assert "factory admin credentials were replaced" in err and "factory PIV management key" not in err, err
    default_key, default_puk, serial = _card_admin_state()
    assert not default_key and not default_puk
    derived = app.instance.services.card_admin.card_admin_credentials("piv", str(serial))
    key, puk = derived.values["management_key"], derived.values["puk"]
    assert isinstance(key, bytes) and isinstance(puk, str)
    # The card itself: the factory key is refused, the derived one accepted.
    assert not _authenticates(bytes.fromhex("010203040506070801020304050607080102030405060708"))
    assert _authenticates(key)

    # A second personalization of the same card works with the derived key (and changes nothing).
    code, out2, err2 = _personalize(app, url, card, tmp_path / "state2")
    assert code == 0, err2
    assert "done: 1 certificate on the card" in err2 and "replaced" not in err2, err2
    assert _authenticates(key)

    # Never in the agent's output, the server's log or the database.
    with app.instance.services.db.connect() as conn:
        raw = conn.connection.driver_connection
        dump = "\n".join(raw.iterdump())
    for text in (out + err + out2 + err2, caplog.text, dump):
        for value in (key.hex(), key.hex().upper(), puk):
            assert value not in text


def test_card_personalized_elsewhere_is_refused(make_agent_server: Callable[..., tuple[Any, str]],
                                                piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    """A management key that is neither the factory one nor the derived one: refused, card untouched."""
    import os

    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import MANAGEMENT_KEY_TYPE, PivSession

    foreign = os.urandom(24)
    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        piv = PivSession(connection)
        piv.authenticate(bytes.fromhex("010203040506070801020304050607080102030405060708"))
        piv.set_management_key(MANAGEMENT_KEY_TYPE.AES192, foreign)
    app, url = make_agent_server(_with_card_admin)
    browser = Browser(app)
    wf_id, enrollment_code = browser.start()
    agent = run_agent_on_card(piv_card, url, enrollment_code, tmp_path / "state", "--card-profile", "piv", "-v")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 3, err
    assert "[card.admin_credential_unknown]" in err and "an operator must reset the card" in err, err
    # The server was told: the personalization ends now with the reason, not at its deadline an hour later.
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "card.admin_credential_unknown" in page and "personalized elsewhere" in page, page
    with app.instance.services.db.connect() as conn:
        state = conn.execute(select(workflow.c.state).where(workflow.c.id == wf_id)).scalar_one()
    assert state == "FAILED"
    assert _authenticates(foreign)  # nothing on the card changed
    assert _card_admin_state()[1]  # the PUK is still the factory one


# --- key attestation -------------------------------------------------------------------------------


def _attesting_policy(roots: Path, *, on_card_unable: str = "skip") -> Callable[[dict[str, Any]], None]:
    def edit(settings: dict[str, Any]) -> None:
        settings["personalization"] = {
            "certificates": [{**POLICY[0], "require_attestation": True, "on_card_unable": on_card_unable},
                             POLICY[1]],
            "attestation": {"roots": [str(roots)]},
        }
    return edit


def test_piv_card_attests_its_keys_and_the_certificate_says_card_attested(
        make_agent_server: Callable[..., tuple[Any, str]], piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    """require_attestation on: the agent sends the card's attestation, the server verifies it to the root."""
    app, url = make_agent_server(_attesting_policy(piv_card.extra["attestation_root"]))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(piv_card, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert err.count("the card attests that it generated the key") == 2, err
    with app.instance.services.db.connect() as conn:
        rows = conn.execute(select(certificate.c.der, certificate.c.key_origin)).all()
    origins = {bytes(r.der): r.key_origin for r in rows}
    issued = _issued(app)
    # Both keys attested (the encryption type does not require it, but an attestation sent is checked and kept).
    assert {origins[c.public_bytes(serialization.Encoding.DER)] for c in issued.values()} == {"card-attested"}
    view = app.instance.services.workflows.get(wf_id)
    serial = view.context["token"]["serial"]
    for entry in view.context["certificates"]:
        assert entry["attestation"]["serial"] == serial and entry["attestation"]["firmware"] == "5.4.3", entry
    assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text


def test_piv_card_of_an_unknown_vendor_is_refused_visibly(make_agent_server: Callable[..., tuple[Any, str]],
                                                          piv_card: VirtualCardProcess, tmp_path: Path) -> None:
    """The card attests, but to a root the site does not trust: refused, never taken as card-unattested."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test PIV Attestation Root CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    other_root = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                  .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                  .sign(key, hashes.SHA256()))  # the same name as the card's root, another key
    roots = tmp_path / "roots.pem"
    roots.write_bytes(other_root.public_bytes(serialization.Encoding.PEM))
    app, url = make_agent_server(_attesting_policy(roots))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(piv_card, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 4 and "attestation.chain" in err, err
    view = app.instance.services.workflows.get(wf_id)
    assert view.state == "FAILED" and view.context["failure"]["code"] == "attestation.chain"
    assert "configured attestation root" in browser.get(f"/deeplink/workflow/{wf_id}").text
    assert _issued(app) == {}


@pytest.mark.parametrize("on_card_unable", ["skip", "fail"])
def test_card_that_cannot_attest_is_refused_without_hanging(make_agent_server: Callable[..., tuple[Any, str]],
                                                            make_token: Any, tmp_path: Path,
                                                            piv_attestation_ca: tuple[Path, Path],
                                                            on_card_unable: str) -> None:
    """A SoftHSM "card" (PKCS#11, no attestation) where attestation is required: skipped or failed, visibly."""
    app, url = make_agent_server(_attesting_policy(piv_attestation_ca[1], on_card_unable=on_card_unable))
    token = make_token("alice-card", pin="482913")
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent(token, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    view = app.instance.services.workflows.get(wf_id)
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    if on_card_unable == "skip":
        assert agent.returncode == 0, err
        assert "authentication: this card cannot do it (token.cannot_attest)" in err, err
        assert view.state == "SUCCESS" and "Not on this card: authentication" in page
        [entry] = [e for e in view.context["certificates"] if e["type"] == "authentication"]
        assert entry["status"] == "skipped" and "token.cannot_attest" in entry["reason"]
        assert list(_issued(app)) == ["encryption"]
    else:
        assert agent.returncode == 4 and "card.unable" in err, err
        assert view.state == "FAILED" and "cannot attest" in view.context["failure"]["message"]
        assert "cannot attest" in page
        assert _issued(app) == {}
