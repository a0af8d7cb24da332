"""A fake server for the token agent's tests: the JSON API of ``docs/api.md`` in memory.

``FakeApi`` plays the server side on 127.0.0.1 (threaded http.server): it
checks the bearer token, the CSR signatures and keys, issues certificates
with a throw-away CA and answers ``GET /task`` from its state (and, with
``carry_next_task``, puts that task into the actions' answers as
``next_task``), so the agent runs exactly as against the real server.  Tests subclass it to play a
hostile or flaky server.  ``serve`` polls for shutdown every 0.05 s, so a
test's teardown is quick.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from openxpki_py_token.pairing import NONCE_BYTES, pairing_phrase, parse_public_key

# A status a FakeApi subclass's handle() returns to close the connection unanswered.
DROP = 0

RSA_2048 = {"algorithm": "rsa", "size": 2048}
EC_P256 = {"algorithm": "ec", "curve": "P-256"}


def spki_of(key: Any) -> bytes:
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass
class CertSlot:
    """One certificate type of the fake workflow and how far it got."""

    cert_type: str
    key: dict[str, Any]
    key_id: str
    usage: str
    csr_pem: str | None = None
    csr_key_id: str | None = None
    cert: x509.Certificate | None = None
    installed: bool = False
    pending_polls: int = 0  # GET /task answers "wait" this often after the CSR


@dataclass
class FakeApi:
    """The server's half of the API, in memory."""

    slots: list[CertSlot]
    code: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    confirm_after: int = 1  # "wait" answers before the card counts as confirmed
    expires_in: int = 900
    code_used: bool = False
    phrase: str = ""  # the pairing phrase of the last redeemed code
    tokens: set[str] = field(default_factory=set)
    card: dict[str, Any] | None = None
    confirmed: bool = False
    polls: int = 0
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    raw_requests: list[bytes] = field(default_factory=list)
    refuse: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    fail_task: tuple[str, str] | None = None
    issued: int = 0
    #: Answers to POST /token, /csr and /receipt carry the next task (next_task, docs/api.md); False: an older server.
    carry_next_task: bool = False

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake Smartcard CA")])

    # --- dispatch -------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Any, body: dict[str, Any] | None,
               ) -> tuple[int, dict[str, Any] | bytes, dict[str, str]]:
        with self.lock:
            self.requests.append((method, path, body))
            if path in self.refuse:
                status, code, message = self.refuse[path]
                return self._error(status, code, message)
            if (method, path) == ("POST", "/api/v1/enroll"):
                return self.enroll(body or {})
            auth = headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return self._error(401, "auth.token_invalid", "the access token is not valid")
            route = {
                ("POST", "/api/v1/token"): self.report_token,
                ("GET", "/api/v1/task"): lambda _body: self.task(),
                ("POST", "/api/v1/csr"): self.csr,
                ("POST", "/api/v1/receipt"): self.receipt,
            }.get((method, path))
            if route is None:
                return self._error(404, "not_found", f"no {method} {path}")
            status, answer, extra = route(body or {})
            if self.carry_next_task and path != "/api/v1/task" and status < 300 and isinstance(answer, dict):
                # As the real server does: the answer brings what GET /task would answer now.
                task_status, task, _ = self.task()
                if task_status == 200:
                    answer = {**answer, "next_task": task}
            return status, answer, extra

    @staticmethod
    def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        headers = {"Retry-After": "7"} if status == 429 else {}
        return status, {"error": {"code": code, "message": message}}, headers

    # --- the endpoints ----------------------------------------------------------------

    def enroll(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if body.get("code") != self.code:
            return self._error(401, "enroll.code_invalid", "this enrollment code is not valid")
        if self.code_used:
            return self._error(409, "enroll.code_used", "this enrollment code was already used")
        self.code_used = True
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        nonce = secrets.token_bytes(NONCE_BYTES)
        self.phrase = pairing_phrase(17, nonce, parse_public_key(body.get("agent_key", "")))
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in,
                     "workflow_id": 17, "user": "alice", "pairing_phrase": self.phrase,
                     "pairing_nonce": base64.urlsafe_b64encode(nonce).decode().rstrip("=")}, {}

    def report_token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.card is not None and self.card["serial"] != body.get("serial"):
            return self._error(409, "token.mismatch", "this workflow is bound to another card")
        self.card = body
        self.confirmed = self.confirmed or self.confirm_after == 0
        return 200, {"status": "confirmed" if self.confirmed else "awaiting_confirmation"}, {}

    def task(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        if self.card is None:
            return self._error(409, "task.unexpected", "report the card first")
        if self.fail_task is not None:
            return 200, {"task": "failed", "code": self.fail_task[0], "message": self.fail_task[1]}, {}
        if not self.confirmed:
            self.polls += 1
            if self.polls > self.confirm_after:
                self.confirmed = True
            else:
                return 200, {"task": "wait", "reason": "confirm the card in your browser",
                             "retry_after": 0}, {}
        count = len(self.slots)
        for index, slot in enumerate(self.slots, start=1):
            if slot.cert is None and slot.csr_pem is not None and slot.pending_polls > 0:
                slot.pending_polls -= 1
                if slot.pending_polls == 0:
                    self._issue(slot)
                return 200, {"task": "wait", "reason": "waiting for approval", "retry_after": 0}, {}
            if slot.cert is None:
                return 200, {"task": "generate_key", "cert_type": slot.cert_type, "index": index,
                             "count": count, "key": slot.key, "key_id": slot.key_id,
                             "label": slot.cert_type, "usage": slot.usage}, {}
            if not slot.installed:
                return 200, {"task": "install_certificate", "cert_type": slot.cert_type,
                             "index": index, "count": count, "key_id": slot.csr_key_id,
                             "label": slot.cert_type,
                             "certificate": slot.cert.public_bytes(serialization.Encoding.PEM).decode(),
                             "serial": f"{slot.cert.serial_number:x}"}, {}
        return 200, {"task": "done", "certificates": [
            {"cert_type": s.cert_type, "serial": f"{s.cert.serial_number:x}",
             "subject": s.cert.subject.rfc4514_string(),
             "not_after": s.cert.not_valid_after_utc.isoformat()} for s in self.slots if s.cert]}, {}

    def csr(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        slot = next((s for s in self.slots if s.cert_type == body.get("cert_type")), None)
        if slot is None:
            return self._error(409, "task.unexpected", "no such certificate type")
        try:
            csr = x509.load_pem_x509_csr(str(body["csr"]).encode())
        except (KeyError, ValueError):
            return self._error(422, "csr.invalid", "not a PEM CSR")
        if not csr.is_signature_valid:
            return self._error(422, "csr.signature", "the CSR signature is not valid")
        if slot.csr_pem is not None:
            # Idempotent: the same key gets the same answer, never a second certificate.
            if spki_of(x509.load_pem_x509_csr(slot.csr_pem.encode()).public_key()) != spki_of(csr.public_key()):
                return self._error(422, "csr.key_mismatch", "another key was already sent for this type")
            return self._csr_answer(slot)
        key = csr.public_key()
        expected = slot.key
        if expected["algorithm"] == "rsa":
            ok = isinstance(key, rsa.RSAPublicKey) and key.key_size == expected["size"]
        else:
            ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        if not ok:
            return self._error(422, "csr.key_type", "wrong key type")
        slot.csr_pem = str(body["csr"])
        slot.csr_key_id = str(body["key_id"])
        if slot.pending_polls == 0:
            self._issue(slot)
        return self._csr_answer(slot)

    def _csr_answer(self, slot: CertSlot) -> tuple[int, dict[str, Any], dict[str, str]]:
        if slot.cert is None:
            return 202, {"status": "pending", "reason": "waiting for approval"}, {}
        return 200, {"status": "issued", "serial": f"{slot.cert.serial_number:x}"}, {}

    def _issue(self, slot: CertSlot) -> None:
        assert slot.csr_pem is not None
        csr = x509.load_pem_x509_csr(slot.csr_pem.encode())
        now = datetime.datetime.now(datetime.timezone.utc)
        slot.cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Alice ({slot.cert_type})")]))
            .issuer_name(self.ca_name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .sign(self.ca_key, hashes.SHA256())
        )
        self.issued += 1

    def receipt(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        slot = next((s for s in self.slots if s.cert_type == body.get("cert_type")), None)
        if slot is None or slot.cert is None or body.get("serial") != f"{slot.cert.serial_number:x}":
            return self._error(409, "task.unexpected", "no such certificate")
        slot.installed = True
        return 200, {"status": "installed"}, {}

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, _ in self.requests]


def serve(api: FakeApi, tls: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            api.raw_requests.append(bytes(self.requestline, "latin-1") + b"\n" + bytes(self.headers) + raw)
            body = json.loads(raw) if raw else None
            status, answer, extra = api.handle(method, self.path, self.headers, body)
            if status == DROP:
                self.close_connection = True  # no answer at all: a broken connection
                return
            raw_page = isinstance(answer, bytes)  # a proxy's HTML page, not the API
            data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if raw_page else "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._answer("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    scheme = "https" if tls is not None else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}"


def default_slots(second: dict[str, Any] = EC_P256) -> list[CertSlot]:
    return [CertSlot("authentication", RSA_2048, "01", "sign"),
            CertSlot("encryption", second, "02", "decrypt")]
