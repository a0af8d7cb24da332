"""The installed ``openxpki-py-token`` against a hostile or flaky server.

The agent runs as the user runs it (the console script, a separate process)
on a SoftHSM "card"; the server is ``FakeApi`` (``tests/support/fake_api.py``)
on 127.0.0.1, subclassed here to lie (name another PKI's key, send escape
sequences) or to fail (503 pages, dropped connections).  The card is read
back with OpenSC's pkcs11-tool, an independent reader.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from support.agent import AGENT, PKCS11_TOOL, card_objects
from support.fake_api import DROP, FakeApi, default_slots, serve

pytestmark = pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")

Answer = tuple[int, dict[str, Any] | bytes, dict[str, str]]


def agent(token: Any, url: str, code: str, state_dir: Path, *, timeout: float = 30) -> \
        subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf), "CARD_PIN": token.pin}
    return subprocess.run(
        [str(AGENT), "enroll", "--server", url, f"--code={code}", "--module", str(token.module),
         "--token-label", token.label, "--pin-env", "CARD_PIN", "--state-dir", str(state_dir),
         "--insecure-http-for-localhost", "--timeout", str(timeout)],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)


def certificate_der(token: Any, key_id: str) -> bytes:
    assert PKCS11_TOOL is not None
    return subprocess.run(
        [PKCS11_TOOL, "--module", str(token.module), "--token-label", token.label, "--read-object",
         "--type", "cert", "--id", key_id],
        env={**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf)}, capture_output=True,
        timeout=60, check=True).stdout


@contextlib.contextmanager
def served(api: FakeApi) -> Iterator[str]:
    server, url = serve(api)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def run_first_pki(make_token: Any, tmp_path: Path) -> tuple[Any, FakeApi]:
    """A card that already holds another PKI's key and certificate under ID 01."""
    token = make_token("hostile-card")
    other = FakeApi(default_slots()[:1])
    with served(other) as url:
        done = agent(token, url, other.code, tmp_path / "other-pki")
        assert done.returncode == 0, done.stderr
    return token, other


# --- 1. a task may only touch keys this personalization generated ------------------------------


class CertificateHijacker(FakeApi):
    """Answers every task with a certificate of its own for someone else's key (ID 01)."""

    victim_key: Any = None

    def task(self) -> Answer:
        if self.card is None:
            return self._error(409, "task.unexpected", "report the card first")
        if self.installed_foreign:
            return 200, {"task": "done", "certificates": []}, {}
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Mallory")]))
                .issuer_name(self.ca_name).public_key(self.victim_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.ca_key, hashes.SHA256()))
        return 200, {"task": "install_certificate", "cert_type": "authentication", "index": 1,
                     "count": 1, "key_id": "01", "label": "authentication",
                     "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
                     "serial": f"{cert.serial_number:x}"}, {}

    def receipt(self, body: dict[str, Any]) -> Answer:
        self.installed_foreign = True
        return 200, {"status": "installed"}, {}

    installed_foreign = False


@pytest.mark.parametrize("carried", [False, True], ids=["polled", "carried"])
def test_a_server_cannot_replace_the_certificate_of_a_key_the_agent_did_not_create(
        run_first_pki: tuple[Any, FakeApi], tmp_path: Path, carried: bool) -> None:
    """Also when the task comes as the card report's next_task: it is checked like a polled one."""
    token, other = run_first_pki
    before, cert_before = card_objects(token), certificate_der(token, "01")
    hijacker = CertificateHijacker(default_slots()[:1], confirm_after=0, carry_next_task=carried)
    assert other.slots[0].cert is not None
    hijacker.victim_key = other.slots[0].cert.public_key()  # public: any directory shows it
    with served(hijacker) as url:
        run = agent(token, url, hijacker.code, tmp_path / "state")
    assert run.returncode == 1, run.stderr
    assert "did not generate on the card; refused, nothing on the card was changed" in run.stderr
    assert "[agent.foreign_key]" in run.stderr
    assert "POST /api/v1/receipt" not in hijacker.paths()
    assert ("GET /api/v1/task" in hijacker.paths()) is not carried
    assert card_objects(token) == before
    assert certificate_der(token, "01") == cert_before


def test_an_uncertified_key_of_another_pki_is_not_reused(make_token: Any, tmp_path: Path) -> None:
    """A foreign key under the suggested ID and label, without a certificate, stays foreign."""
    assert PKCS11_TOOL is not None
    token = make_token("hostile-foreign-key")
    subprocess.run([PKCS11_TOOL, "--module", str(token.module), "--token-label", token.label, "--login",
                    "--pin", token.pin, "--keypairgen", "--key-type", "rsa:2048", "--id", "01",
                    "--label", "authentication"],
                   env={**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf)}, capture_output=True,
                   timeout=60, check=True)
    api = FakeApi(default_slots()[:1], confirm_after=0)
    with served(api) as url:
        run = agent(token, url, api.code, tmp_path / "state")
    assert run.returncode == 0, run.stderr
    assert "already on the card" not in run.stderr
    assert api.slots[0].csr_key_id == "0101"
    assert card_objects(token) == [("Certificate", "0101"), ("Private Key", "01"), ("Private Key", "0101"),
                                    ("Public Key", "01"), ("Public Key", "0101")]


# --- 2. nothing from the server steers the terminal ---------------------------------------------

NASTY = "\x1b]0;pwned\x07\x1b[2J\r\ndone: 9 certificates on the card \u202egnp.exe \x9b31m"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\u202e", "\x9b")


class Hostile(FakeApi):
    """Puts escape sequences, fake lines and bidi overrides into everything it says."""

    def task(self) -> Answer:
        status, answer, headers = super().task()
        if isinstance(answer, dict) and answer.get("task") == "wait":
            answer["reason"] = "wait " + NASTY
        if isinstance(answer, dict) and answer.get("task") == "done":
            for cert in answer["certificates"]:
                cert.update(subject=NASTY, not_after=NASTY, status=NASTY)
        return status, answer, headers

    def _csr_answer(self, slot: Any) -> Answer:
        status, answer, headers = super()._csr_answer(slot)
        if isinstance(answer, dict) and answer.get("status") == "pending":
            answer["reason"] = "csr " + NASTY
        return status, answer, headers


def _assert_clean(text: str) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, f"{char!r} reached the terminal: {text!r}"
    assert not any(line.startswith("done: 9") for line in text.splitlines()), text
    assert "\\x1b]0;pwned\\x07" in text  # shown, neutralised


def test_server_text_cannot_steer_the_terminal(make_token: Any, tmp_path: Path) -> None:
    token = make_token("hostile-terminal")
    slots = default_slots()
    slots[0].pending_polls = 2
    api = Hostile(slots, confirm_after=2)
    with served(api) as url:
        run = agent(token, url, api.code, tmp_path / "state")
    assert run.returncode == 0, run.stderr
    assert "done: 2 certificates on the card" in run.stderr
    _assert_clean(run.stderr)
    _assert_clean(run.stdout)
    assert len(run.stdout.splitlines()) == 2  # one line per certificate, however hostile its fields

    failing = Hostile(default_slots(), confirm_after=0, fail_task=("x\x1b[31m", "failed " + NASTY))
    with served(failing) as url:
        run = agent(token, url, failing.code, tmp_path / "state")
    assert run.returncode == 4
    _assert_clean(run.stderr)


# --- 4. a flaky server is ridden out within --timeout --------------------------------------------

_PAGE_503 = b"<html><body><h1>Service Unavailable</h1></body></html>"


class Flaky(FakeApi):
    """Fails each (method, path) as scripted, then behaves.

    ``503``: a proxy's page, the request not handled; ``drop``: the connection
    closes before the request is handled; ``lost``: the request is handled,
    then the connection closes (the answer is lost).
    """

    script: dict[str, list[str]]

    def handle(self, method: str, path: str, headers: Any, body: dict[str, Any] | None) -> Answer:
        with self.lock:
            plan = self.script.get(f"{method} {path}", [])
            step = plan.pop(0) if plan else "ok"
        if step == "503":
            with self.lock:
                self.requests.append((method, path, body))
            return 503, _PAGE_503, {"Retry-After": "0.2"}
        if step == "drop":
            with self.lock:
                self.requests.append((method, path, body))
            return DROP, {}, {}
        answer = super().handle(method, path, headers, body)
        return (DROP, {}, {}) if step == "lost" else answer


def test_agent_retries_503_and_broken_connections_and_issues_once(make_token: Any, tmp_path: Path) -> None:
    token = make_token("flaky-server")
    api = Flaky(default_slots(), confirm_after=0)
    api.script = {
        "POST /api/v1/enroll": ["503", "503"],  # not handled: safe to send the code again
        "GET /api/v1/task": ["drop", "503", "503", "503", "503"],
        "POST /api/v1/csr": ["lost", "503"],  # issued, answer lost: the CSR post is idempotent
        "POST /api/v1/receipt": ["lost", "drop"],
    }
    with served(api) as url:
        run = agent(token, url, api.code, tmp_path / "state")
    assert run.returncode == 0, run.stderr
    assert "the server is not available (HTTP 503 Service Unavailable); trying again in 0.2 s…" in run.stderr
    assert "cannot reach" in run.stderr  # the dropped connections, each said once
    assert api.paths().count("POST /api/v1/enroll") == 3
    assert api.issued == 2
    assert card_objects(token) == [("Certificate", "01"), ("Certificate", "02"), ("Private Key", "01"),
                                    ("Private Key", "02"), ("Public Key", "01"), ("Public Key", "02")]


def test_enrollment_code_is_not_sent_again_when_its_answer_was_lost(make_token: Any, tmp_path: Path) -> None:
    token = make_token("flaky-enroll")
    api = Flaky(default_slots(), confirm_after=0)
    api.script = {"POST /api/v1/enroll": ["lost"]}
    with served(api) as url:
        run = agent(token, url, api.code, tmp_path / "state")
        again = agent(token, url, api.code, tmp_path / "state")
    assert run.returncode == 5, run.stderr
    assert "if the next run says the code was used, reload the personalization page" in run.stderr
    assert api.paths().count("POST /api/v1/enroll") == 2  # one per run, never a retry
    assert again.returncode == 4 and "[enroll.code_used]" in again.stderr


def test_an_unavailable_server_is_retried_until_the_timeout(make_token: Any, tmp_path: Path) -> None:
    token = make_token("flaky-down")
    api = Flaky(default_slots(), confirm_after=0)
    api.script = {"GET /api/v1/task": ["503"] * 10_000}
    started = time.monotonic()
    with served(api) as url:
        run = agent(token, url, api.code, tmp_path / "state", timeout=4)
    elapsed = time.monotonic() - started
    assert run.returncode == 5, run.stderr
    assert elapsed >= 4
    assert "HTTP 503 Service Unavailable" in run.stderr.splitlines()[-1]
    assert "check --server" not in run.stderr
    assert api.paths().count("GET /api/v1/task") > 10
