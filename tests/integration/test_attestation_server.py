"""Key attestation on the server side, in-process: JSON API, workflow, CA (SoftHSM), audit, page.

The agent is played by HTTP calls with software keys and a YubiKey-like
attestation chain built here (root → slot f9 device certificate → per-key
certificate with Yubico's extensions); the real agent with the virtual PIV
card is tests/integration/test_agent_piv_card.py.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from test_personalization_server import Agent, Browser, confirmed_agent, make_csr

from openxpki_py.crypto.attestation import OID_FIRMWARE, OID_POLICY, OID_SERIAL
from openxpki_py.db.schema import audit_log, certificate
from openxpki_py.web.app import create_app

CARD_SERIAL = 19713835
NOW = datetime.datetime.now(datetime.timezone.utc)


def _cert(cn: str, public: Any, issuer: str, issuer_key: Any, *extensions: tuple[str, bytes],
          ca: bool = False) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(public).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for oid, value in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class Vendor:
    """A card maker's attestation root and one card's slot f9 key."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Test PIV Attestation Root CA", self.root_key.public_key(), "Test PIV Attestation Root CA",
                          self.root_key, ca=True)
        self.device_key = ec.generate_private_key(ec.SECP256R1())
        self.device = _cert(f"Test PIV Attestation {CARD_SERIAL}", self.device_key.public_key(),
                            "Test PIV Attestation Root CA", self.root_key)

    def attest(self, public: Any, serial: int = CARD_SERIAL, signer: Any = None) -> dict[str, str]:
        """What the agent sends for a key the card generated."""
        key_cert = _cert("YubiKey PIV Attestation 9a", public, f"Test PIV Attestation {CARD_SERIAL}",
                         signer or self.device_key,
                         (OID_FIRMWARE.dotted_string, bytes((5, 7, 1))),
                         (OID_SERIAL.dotted_string, b"\x02\x04" + serial.to_bytes(4, "big")),
                         (OID_POLICY.dotted_string, bytes((2, 3))))
        return {"format": "yubico-piv", "key_certificate": _pem(key_cert), "device_certificate": _pem(self.device)}


@pytest.fixture(scope="module")
def vendor() -> Vendor:
    return Vendor()


@pytest.fixture
def make_app(make_instance: Callable[..., Any], sqlite_engine: Any, vendor: Vendor,
             tmp_path: Path) -> Callable[..., Any]:
    roots = tmp_path / "attestation-roots.pem"
    roots.write_text(_pem(vendor.root))

    def make(*, required: bool, on_card_unable: str = "skip", with_roots: bool = True) -> Any:
        def policy(settings: dict[str, Any]) -> None:
            settings["personalization"] = {
                "certificates": [{"type": "authentication", "profile": "smartcard_logon", "key": "ec-p256",
                                  "key_id": "01", "require_attestation": required,
                                  "on_card_unable": on_card_unable}],
                "attestation": {"roots": [str(roots)] if with_roots else []},
            }
        inst = make_instance(sqlite_engine, overrides=policy)
        application = create_app(inst.config, inst.services)
        application.instance = inst  # type: ignore[attr-defined]
        return application
    return make


def _post_csr(agent: Agent, key: Any, attestation: dict[str, str] | None) -> Any:
    task = agent.call("GET", "task").json
    body = {"cert_type": task["cert_type"], "key_id": task["key_id"], "csr": make_csr(key),
            "token_serial": str(CARD_SERIAL)}
    if attestation is not None:
        body["attestation"] = attestation
    return agent.call("POST", "csr", body)


def _origins(app: Any) -> list[str]:
    with app.instance.services.db.connect() as conn:
        return [r.key_origin for r in conn.execute(select(certificate.c.key_origin))]


def _audit(app: Any, event: str) -> list[Any]:
    with app.instance.services.db.connect() as conn:
        return conn.execute(select(audit_log.c.outcome, audit_log.c.details).where(audit_log.c.event == event)
                            .order_by(audit_log.c.id)).all()


def test_attested_key_is_issued_as_card_attested(make_app: Callable[..., Any], vendor: Vendor) -> None:
    app = make_app(required=True)
    browser, wf_id, agent = confirmed_agent(app, str(CARD_SERIAL))
    assert agent.call("GET", "task").json["attestation"] == "required"
    key = ec.generate_private_key(ec.SECP256R1())
    posted = _post_csr(agent, key, vendor.attest(key.public_key()))
    assert posted.status_code in (200, 202), posted.json
    assert _origins(app) == ["card-attested"]
    [entry] = app.instance.services.workflows.get(wf_id).context["certificates"]
    assert entry["key_origin"] == "card-attested"
    assert {k: entry["attestation"][k] for k in ("serial", "firmware", "pin_policy", "touch_policy")} == {
        "serial": str(CARD_SERIAL), "firmware": "5.7.1", "pin_policy": "once", "touch_policy": "cached"}
    [(outcome, details)] = _audit(app, "key.attested")
    assert outcome == "ok" and details["serial"] == str(CARD_SERIAL) and details["cert_type"] == "authentication"
    [(_, issued)] = _audit(app, "cert.issue")
    assert issued["key_origin"] == "card-attested"


def _ended(app: Any, browser: Browser, wf_id: int, posted: Any, code: str) -> None:
    """The refusal is visible: the agent's answer, the workflow, the page and the audit log say why."""
    assert posted.status_code == 422 and posted.json["error"]["code"] == code, posted.json
    view = app.instance.services.workflows.get(wf_id)
    assert view.state == "FAILED" and view.context["failure"]["code"] == code
    assert "attest" in browser.get(f"/deeplink/workflow/{wf_id}").text
    assert any(d.get("action") == "submit_csr" and d.get("error") == code
               for outcome, d in _audit(app, "workflow.action") if outcome == "failed")
    assert _origins(app) == []  # nothing issued, nothing downgraded to card-unattested


def test_missing_attestation_where_required_ends_visibly(make_app: Callable[..., Any]) -> None:
    """A script posting a software key's CSR without attestation: refused, the personalization ends."""
    app = make_app(required=True)
    browser, wf_id, agent = confirmed_agent(app, str(CARD_SERIAL))
    posted = _post_csr(agent, ec.generate_private_key(ec.SECP256R1()), None)
    _ended(app, browser, wf_id, posted, "csr.attestation_required")
    assert "require_attestation" in posted.json["error"]["message"]
    assert agent.call("GET", "task").json["task"] == "failed"  # the agent learns it too: no hang


def test_forged_attestation_is_refused_never_downgraded(make_app: Callable[..., Any], vendor: Vendor) -> None:
    """Attestation not required, but one that does not verify is refused, not taken as card-unattested."""
    app = make_app(required=False)
    browser, wf_id, agent = confirmed_agent(app, str(CARD_SERIAL))
    key = ec.generate_private_key(ec.SECP256R1())
    forger = ec.generate_private_key(ec.SECP256R1())  # not the card's f9 key
    _ended(app, browser, wf_id, _post_csr(agent, key, vendor.attest(key.public_key(), signer=forger)),
           "attestation.chain")


def test_attestation_for_another_key_is_refused(make_app: Callable[..., Any], vendor: Vendor) -> None:
    """A real attestation of some card key, replayed next to a software key's CSR."""
    app = make_app(required=True)
    browser, wf_id, agent = confirmed_agent(app, str(CARD_SERIAL))
    card_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    _ended(app, browser, wf_id, _post_csr(agent, ec.generate_private_key(ec.SECP256R1()), vendor.attest(card_key)),
           "attestation.key_mismatch")


def test_attested_serial_must_be_the_reported_card(make_app: Callable[..., Any], vendor: Vendor) -> None:
    app = make_app(required=True)
    browser, wf_id, agent = confirmed_agent(app, str(CARD_SERIAL))
    key = ec.generate_private_key(ec.SECP256R1())
    _ended(app, browser, wf_id, _post_csr(agent, key, vendor.attest(key.public_key(), serial=CARD_SERIAL + 1)),
           "attestation.serial_mismatch")


def test_unattested_key_where_not_required_stays_card_unattested(make_app: Callable[..., Any]) -> None:
    app = make_app(required=False)
    _, _, agent = confirmed_agent(app, str(CARD_SERIAL))
    assert "attestation" not in agent.call("GET", "task").json
    posted = _post_csr(agent, ec.generate_private_key(ec.SECP256R1()), None)
    assert posted.status_code in (200, 202), posted.json
    assert _origins(app) == ["card-unattested"]


def test_attestation_must_be_an_object_of_text(make_app: Callable[..., Any]) -> None:
    app = make_app(required=False)
    _, _, agent = confirmed_agent(app, str(CARD_SERIAL))
    not_text: Any = {"key_certificate": 5}
    posted = _post_csr(agent, ec.generate_private_key(ec.SECP256R1()), not_text)
    assert posted.status_code == 400 and posted.json["error"]["code"] == "request.invalid", posted.json


def test_site_without_roots_notes_the_attestation_unchecked(make_app: Callable[..., Any], vendor: Vendor) -> None:
    """Nothing to check a YubiKey's attestation against: issued as card-unattested, and the entry says why."""
    app = make_app(required=False, with_roots=False)
    _, wf_id, agent = confirmed_agent(app, str(CARD_SERIAL))
    key = ec.generate_private_key(ec.SECP256R1())
    posted = _post_csr(agent, key, vendor.attest(key.public_key()))
    assert posted.status_code in (200, 202), posted.json
    assert _origins(app) == ["card-unattested"]
    [entry] = app.instance.services.workflows.get(wf_id).context["certificates"]
    assert entry["attestation"] == {"checked": "no", "reason": "no attestation roots are configured"}
    assert _audit(app, "key.attested") == []
