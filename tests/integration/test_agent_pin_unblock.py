"""PIN unblock with the real agent on the virtual PIV card through pcscd + OpenSC.

The card is personalized first with per-card admin credentials (card_admin),
so that its PUK is the one the server derives; three wrong PINs block it; the
owner asks on "My certificates", runs ``openxpki-py-token unblock`` and
confirms the phrase; afterwards the new PIN signs through OpenSC and the old
one does not.  The same for the virtual OpenPGP card, whose admin PIN (PW3)
unblocks PW1.  Refusals without a card are tests/integration/test_pin_unblock_server.py.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from support.agent import AGENT, CSRF_RE, Browser, printed_phrase, run_agent_on_card
from support.smartcards import OPENSC_MODULE, VirtualCardProcess

from test_agent_piv_card import _card_admin_state, _issued, _personalize, _pkcs11_tool, _with_card_admin

pytestmark = pytest.mark.slow
pytest.importorskip("yubikit.piv", reason="the agent's [piv] extra is not installed")
CODE_RE = re.compile(r'<code id="enrollment-code">([A-Z0-9-]+)</code>')
NEW_PIN = "24681357"


def _block_pin(pin: str) -> None:
    """Three wrong PINs, as a user who forgot it; the right one is then refused too."""
    from ykman.pcsc import list_devices
    from yubikit.core import InvalidPinError
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        piv = PivSession(connection)
        for _ in range(3):
            with pytest.raises(InvalidPinError):
                piv.verify_pin("99999999")
        assert piv.get_pin_attempts() == 0
        with pytest.raises(InvalidPinError):
            piv.verify_pin(pin)


def _pin_attempts() -> int:
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import PivSession

    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        return int(PivSession(connection).get_pin_attempts())


def _code(browser: Browser, serial: str) -> tuple[int, str]:
    """Alice presses "Unblock the PIN of card …", then "Show the code"."""
    page = browser.get("/certificates").text
    csrf = CSRF_RE.search(page)
    assert csrf and f'id="unblock-{serial}"' in page, page
    started = browser.post(f"/certificates/cards/{serial}/unblock", {"csrf_token": csrf.group(1)})
    assert started.status_code == 303 and "/unblock/" in started.headers["Location"], started.text
    wf_id = int(started.headers["Location"].rsplit("/", 1)[1])
    shown = browser.post(f"/unblock/{wf_id}/code", {"csrf_token": csrf.group(1)}).text
    code = CODE_RE.search(shown)
    assert code, shown
    return wf_id, code.group(1)


def _run_unblock(url: str, code: str, state: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NEW_PIN": NEW_PIN}
    env.pop("SOFTHSM2_CONF", None)
    return subprocess.Popen(
        [str(AGENT), "unblock", "--server", url, "--code", code, "--new-pin-env", "NEW_PIN", "--state-dir",
         str(state), "--insecure-http-for-localhost", "--timeout", "60", "-v"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _confirm(browser: Browser, wf_id: int, phrase: str) -> None:
    page = browser.get(f"/unblock/{wf_id}").text
    for _ in range(100):  # the agent reports the card right after printing its phrase
        if 'id="confirm-card"' in page:
            break
        time.sleep(0.1)
        page = browser.get(f"/unblock/{wf_id}").text
    shown = re.search(r'<strong id="pairing-phrase">([a-z ]+)</strong>', page)
    assert shown and shown.group(1) == phrase, page
    csrf, version = CSRF_RE.search(page), re.search(r'name="version" value="(\d+)"', page)
    agent = re.search(r'name="agent" value="(\d+)"', page)
    assert csrf and version and agent
    done = browser.post(f"/unblock/{wf_id}/action", {"csrf_token": csrf.group(1), "action": "confirm_card",
                                                     "version": version.group(1), "agent": agent.group(1)})
    assert done.status_code == 303, done.text


def _unblock(app: Any, url: str, serial: str, state: Path) -> tuple[int, int, str, str]:
    browser = Browser(app)
    wf_id, code = _code(browser, serial)
    agent = _run_unblock(url, code, state)
    _confirm(browser, wf_id, printed_phrase(agent))
    out, err = agent.communicate(timeout=120)
    return wf_id, agent.returncode, out, err


def _signs(pin: str, tmp_path: Path, key_id: str = "01") -> bytes | None:
    """A signature with the logon key (PIV 9a: OpenSC ID 01; OpenPGP: 03) after a login with ``pin``; None: refused."""
    data, sig = tmp_path / "data.bin", tmp_path / "data.sig"
    data.write_bytes(b"logon challenge")
    try:
        _pkcs11_tool("--login", "--pin", pin, "--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", key_id,
                     "--input-file", str(data), "--output-file", str(sig))
    except subprocess.CalledProcessError:
        return None
    return sig.read_bytes()


def test_blocked_pin_unblocked_and_the_new_pin_signs(make_agent_server: Callable[..., tuple[Any, str]],
                                                      make_piv_card: Callable[..., VirtualCardProcess],
                                                      tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    card = make_piv_card("--firmware", "5.7.1")
    app, url = make_agent_server(_with_card_admin)
    code, _, err = _personalize(app, url, card, tmp_path / "state")
    assert code == 0, err
    serial = str(_card_admin_state()[2])
    puk = app.instance.services.card_admin.card_admin_credentials("piv", serial).values["puk"]
    _block_pin(card.pin)
    assert _signs(card.pin, tmp_path) is None

    wf_id, returncode, out, err = _unblock(app, url, serial, tmp_path / "unblock-state")
    assert returncode == 0, err
    assert "done: the PIN is unblocked" in err and NEW_PIN not in out + err, err
    assert app.instance.services.workflows.get(wf_id).state == "UNBLOCKED"
    assert "has the new PIN" in Browser(app).get(f"/unblock/{wf_id}").text

    # The new PIN signs through OpenSC, and the signature verifies with the issued certificate; the old PIN does not.
    signature = _signs(NEW_PIN, tmp_path)
    assert signature is not None
    public = _issued(app)["authentication"].public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"logon challenge", padding.PKCS1v15(), hashes.SHA256())
    assert _signs(card.pin, tmp_path) is None

    # The PUK was never shown: not by the agent, not in the server's log, not in the database.
    with app.instance.services.db.connect() as conn:
        dump = "\n".join(conn.connection.driver_connection.iterdump())
    for text in (out + err, caplog.text, dump):
        assert puk not in text


def test_a_card_that_refuses_the_puk_stays_as_it_was(make_agent_server: Callable[..., tuple[Any, str]],
                                                      make_piv_card: Callable[..., VirtualCardProcess],
                                                      tmp_path: Path) -> None:
    """A PUK changed behind the PKI's back: clear error, PIN still blocked, the unblock ends FAILED."""
    from ykman.pcsc import list_devices
    from yubikit.core.smartcard import SmartCardConnection
    from yubikit.piv import PivSession

    card = make_piv_card("--firmware", "5.7.1")
    app, url = make_agent_server(_with_card_admin)
    assert _personalize(app, url, card, tmp_path / "state")[0] == 0
    serial = str(_card_admin_state()[2])
    puk = app.instance.services.card_admin.card_admin_credentials("piv", serial).values["puk"]
    [device] = list_devices("Virtual PCD 00 00")
    with device.open_connection(SmartCardConnection) as connection:
        PivSession(connection).change_puk(str(puk), "87654321")
    _block_pin(card.pin)

    wf_id, returncode, _, err = _unblock(app, url, serial, tmp_path / "unblock-state")
    assert returncode == 3, err
    assert "refused the PUK your PKI holds for it" in err and "[card.puk_refused]" in err, err
    assert _pin_attempts() == 0  # still blocked: nothing changed but the PUK's retry counter
    view = app.instance.services.workflows.get(wf_id)
    assert view.state == "FAILED" and view.context["result"] == {"outcome": "failed", "code": "card.puk_refused"}
    assert "card.puk_refused" in Browser(app).get(f"/unblock/{wf_id}").text


def test_openpgp_card_pin_unblocked_with_its_admin_pin(make_agent_server: Callable[..., tuple[Any, str]],
                                                        openpgp_card: VirtualCardProcess, tmp_path: Path) -> None:
    """The OpenPGP route: VERIFY PW3 with the derived admin PIN, RESET RETRY COUNTER P1=02, then PW1 works."""
    from test_agent_openpgp_card import AUTHENTICATION, _policy, _token_serial_pgp

    def with_card_admin(settings: dict[str, Any]) -> None:
        _policy(AUTHENTICATION)(settings)
        settings["card_admin"] = {"enabled": True}

    app, url = make_agent_server(with_card_admin)
    browser = Browser(app)
    personalization, enrollment_code = browser.start()
    agent = run_agent_on_card(openpgp_card, url, enrollment_code, tmp_path / "state")  # the derived admin PIN
    browser.confirm_when_asked(personalization)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    serial = _token_serial_pgp()
    admin_pin = app.instance.services.card_admin.card_admin_credentials("openpgp", serial).values["admin_pin"]
    for _ in range(3):
        assert _login(openpgp_card.pin[::-1]) != 0
    assert _login(openpgp_card.pin) != 0  # blocked

    wf_id, returncode, out, err = _unblock(app, url, serial, tmp_path / "unblock-state")
    assert returncode == 0, err
    assert "done: the PIN is unblocked" in err, err
    view = app.instance.services.workflows.get(wf_id)
    assert view.state == "UNBLOCKED" and view.context["card"]["card_profile"] == "openpgp"
    assert _signs(NEW_PIN, tmp_path, "03") is not None and _login(openpgp_card.pin) != 0
    assert admin_pin not in out + err


def _login(pin: str) -> int:
    return subprocess.run(["pkcs11-tool", "--module", str(OPENSC_MODULE), "--login", "--pin", pin, "--list-objects"],
                          capture_output=True, timeout=60).returncode
