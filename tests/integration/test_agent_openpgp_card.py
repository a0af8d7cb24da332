"""The agent personalizes an OpenPGP card through the real smartcard stack.

pcscd + vsmartcard's vpcd reader + a software OpenPGP v3.4 card
(``support.smartcards``), OpenSC's PKCS#11 module, the installed
``openxpki-py-token`` command, and the project's server in-process on a
local http server.  What ends up on the card is checked with OpenSC's own
tools (``pkcs15-tool``, ``pkcs11-tool``), as a user's application sees it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import select
from support.agent import Browser, run_agent_on_card
from support.smartcards import OPENSC_MODULE, VirtualCardProcess

from openxpki_py.db.schema import certificate

pytestmark = pytest.mark.slow

AUTHENTICATION = {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048",
                  "key_id": "01", "usage": "sign"}
ENCRYPTION = {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02",
              "usage": "decrypt"}


def _policy(*types: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    def edit(settings: dict[str, Any]) -> None:
        settings["personalization"] = {"certificates": list(types)}
    return edit


def _issued(app: Any) -> list[x509.Certificate]:
    with app.instance.services.db.connect() as conn:
        rows = conn.execute(select(certificate.c.der)).all()
    return [x509.load_der_x509_certificate(bytes(r.der)) for r in rows]


def _pkcs11_tool(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), *args],
                          capture_output=True, timeout=60, check=True)


def test_openpgp_card_gets_its_logon_certificate(make_agent_server: Callable[..., tuple[Any, str]],
                                                 openpgp_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(_policy(AUTHENTICATION))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(openpgp_card, url, code, tmp_path / "state", "--so-pin-env", "CARD_SO_PIN")
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "OpenPGP" in err and "done: 1 certificate on the card" in err
    assert openpgp_card.pin not in out + err and openpgp_card.so_pin not in out + err
    [issued] = _issued(app)

    # OpenSC's PKCS#15 view: the authentication key (ID 03) was made on the card
    # and can never leave it.
    dump = subprocess.run(["pkcs15-tool", "-D"], capture_output=True, text=True, timeout=60,
                          check=True).stdout
    key = _section(dump, "Private RSA Key [Authentication key]")
    assert re.search(r"ID\s+: 03\b", key), key
    assert "neverExtract" in key and "local" in key, key

    # PKCS#11, as a user's application sees it: the certificate sits next to its key.
    listing = _pkcs11_tool("--login", "--pin", openpgp_card.pin, "--list-objects").stdout.decode()
    private = _section(listing, "Private Key Object")
    assert "never extractable" in private and "local" in private, listing
    der = _pkcs11_tool("--read-object", "--type", "cert", "--id", "03").stdout
    assert x509.load_der_x509_certificate(der) == issued
    public = issued.public_key()
    assert public.key_size == 2048  # type: ignore[union-attr]
    assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text


def test_openpgp_decryption_key_cannot_sign_its_csr(make_agent_server: Callable[..., tuple[Any, str]],
                                                    openpgp_card: VirtualCardProcess,
                                                    tmp_path: Path) -> None:
    """The decryption key answers only PSO:DECIPHER, so no CSR can prove it: the type is left out, up front.

    This personalization used to hang in WAIT_FOR_CSR ("Generating key encryption (2/2)") forever;
    then the agent had to try and report back (``POST /unable``); now the server plans it away from
    the card's report, before the user confirms, and never asks the card for it.
    """
    app, url = make_agent_server(_policy(AUTHENTICATION, ENCRYPTION))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(openpgp_card, url, code, tmp_path / "state", "--so-pin-env", "CARD_SO_PIN")
    page, _ = browser.phrase_when_asked(wf_id)  # before the user confirms, the page shows the card's plan
    assert "authentication certificate, rsa-2048 key made on the card" in page, page
    assert "Not on this card: encryption: its Encryption key (slot 02) cannot sign" in page, page
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "done: 1 certificate" in err and "not on this card: encryption" in err, err
    assert "generating key 1/1 (authentication" in err, err
    assert "encryption: this card cannot do it" not in err  # no round trip through POST /unable
    assert len(_issued(app)) == 1  # the authentication certificate, on the card
    page = browser.get(f"/deeplink/workflow/{wf_id}").text
    assert "Your card is ready, without: encryption" in page and "Not on this card: encryption" in page
    wf = app.instance.services.workflows.get(wf_id)
    assert "report_card_unable" not in [h.action for h in wf.history]
    skipped = next(e for e in wf.context["certificates"] if e["type"] == "encryption")
    assert (skipped["status"], skipped["skip_reason"]) == ("skipped", "slot_cannot_sign")
    # Only the authentication slot got a key: the decryption slot was never touched.
    dump = subprocess.run(["pkcs15-tool", "-D"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "Private RSA Key [Authentication key]" in dump and "[Encryption key]" not in dump, dump


def test_policy_can_fail_a_personalization_the_card_cannot_complete(
        make_agent_server: Callable[..., tuple[Any, str]], openpgp_card: VirtualCardProcess, tmp_path: Path) -> None:
    app, url = make_agent_server(_policy(AUTHENTICATION, {**ENCRYPTION, "on_card_unable": "fail"}))
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(openpgp_card, url, code, tmp_path / "state", "--so-pin-env", "CARD_SO_PIN")
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 4, err  # the server ended it: refused (cli.EXIT_REFUSED)
    assert "card.unable" in err, err
    wf = app.instance.services.workflows.get(wf_id)
    assert wf.state == "FAILED" and wf.context["failure"]["code"] == "card.unable"
    assert "cannot be made on this card" in browser.get(f"/deeplink/workflow/{wf_id}").text
    assert _issued(app) == []  # ended at the plan, before any key or certificate


def _section(text: str, title: str) -> str:
    """The indented block under the first line that starts with ``title``."""
    lines = text.splitlines()
    for at, line in enumerate(lines):
        if line.startswith(title):
            block = [line]
            for following in lines[at + 1:]:
                if following and not following[0].isspace():
                    break
                block.append(following)
            return "\n".join(block)
    raise AssertionError(f"{title!r} not in:\n{text}")


def test_openpgp_admin_pin_becomes_the_server_derived_one(make_agent_server: Callable[..., tuple[Any, str]],
                                                          openpgp_card: VirtualCardProcess,
                                                          tmp_path: Path) -> None:
    """No --so-pin: the factory admin PIN (PW3) is replaced by the derived one, which a second run uses."""

    def with_card_admin(settings: dict[str, Any]) -> None:
        _policy(AUTHENTICATION)(settings)
        settings["card_admin"] = {"enabled": True}

    app, url = make_agent_server(with_card_admin)
    errors = []
    for run in ("first", "second"):
        browser = Browser(app)
        wf_id, code = browser.start()
        agent = run_agent_on_card(openpgp_card, url, code, tmp_path / run, "-v")
        browser.confirm_when_asked(wf_id)
        out, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
        assert "done: 1 certificate on the card" in err
        errors.append(out + err)
    assert "factory admin credentials were replaced" in errors[0]
    assert "replaced" not in errors[1]
    serial = _token_serial_pgp()
    admin_pin = app.instance.services.card_admin.card_admin_credentials("openpgp", serial).values["admin_pin"]
    assert isinstance(admin_pin, str)
    assert all(admin_pin not in text for text in errors)

    def so_login(pin: str) -> int:
        return subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), "--login", "--login-type", "so",
                               "--so-pin", pin, "--list-objects"], capture_output=True, timeout=60).returncode

    assert so_login(openpgp_card.so_pin) != 0  # the factory admin PIN no longer works…
    assert so_login(admin_pin) == 0  # …the derived one does (and resets the try counter)


def _token_serial_pgp() -> str:
    listing = _pkcs11_tool("--list-token-slots").stdout.decode()
    return next(line.split(":", 1)[1].strip() for line in listing.splitlines() if "serial num" in line)


def test_openpgp_card_with_a_foreign_admin_pin_is_refused(make_agent_server: Callable[..., tuple[Any, str]],
                                                          openpgp_card: VirtualCardProcess,
                                                          tmp_path: Path) -> None:
    """An admin PIN that is neither the factory one nor the derived one: refused with the code, nothing made."""
    subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), "--login", "--login-type", "so",
                    "--so-pin", openpgp_card.so_pin, "--change-pin", "--new-pin", "87654321"],
                   capture_output=True, timeout=60, check=True)

    def with_card_admin(settings: dict[str, Any]) -> None:
        _policy(AUTHENTICATION)(settings)
        settings["card_admin"] = {"enabled": True}

    app, url = make_agent_server(with_card_admin)
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent_on_card(openpgp_card, url, code, tmp_path / "state")
    browser.confirm_when_asked(wf_id)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 3, err
    assert "[card.admin_credential_unknown]" in err and "an operator must reset the card" in err, err
    assert _issued(app) == []
    # The foreign admin PIN still works (two tries were spent, the right one resets the counter).
    _pkcs11_tool("--login", "--login-type", "so", "--so-pin", "87654321", "--list-objects")
