"""The agent's HTTP client: URL rules, error mapping, retries, no redirects."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from openxpki_py_token.api_client import ApiClient, api_base_url
from openxpki_py_token.errors import FieldProblem, ProtocolError, ServerRefused, ServerUnreachable, UsageError

# Each test queues (status, body bytes, headers) answers; the server records requests.
Answer = tuple[int, bytes, dict[str, str]]


class Scripted:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    script = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def _go(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            script.seen.append((self.command, self.path, dict(self.headers), raw))
            status, body, headers = script.answers.pop(0)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _go  # noqa: N815 - http.server's naming

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll: shutdown() waits for the loop to notice it (0.5 s by default).
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}/openxpki"
    server.shutdown()
    server.server_close()


def _client(url: str) -> ApiClient:
    return ApiClient(url, allow_http_localhost=True, backoff=0.01, retry_window=5.0)


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_base_url_rules() -> None:
    assert api_base_url("https://pki.example.org/openxpki", allow_http_localhost=False) == \
        "https://pki.example.org/openxpki/"
    assert api_base_url("https://pki.example.org", allow_http_localhost=False) == "https://pki.example.org/"
    assert api_base_url("http://localhost:8080/", allow_http_localhost=True) == "http://localhost:8080/"
    for bad in ("ftp://x", "pki.example.org", "https://u:p@pki.example.org", "https://pki/?a=1"):
        with pytest.raises(UsageError):
            api_base_url(bad, allow_http_localhost=True)
    with pytest.raises(UsageError, match="plain http is refused"):
        api_base_url("http://10.0.0.1/", allow_http_localhost=True)
    with pytest.raises(UsageError, match="needs --insecure-http-for-localhost"):
        api_base_url("http://127.0.0.1/", allow_http_localhost=False)


def test_calls_send_json_and_the_bearer_token(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers.append((200, _json({"status": "installed"}), {}))
    client = _client(url)
    client.access_token = "tok-123"
    answer = client.post("receipt", {"serial": "0a"})
    assert answer.status == 200 and answer.body == {"status": "installed"}
    method, path, headers, raw = script.seen[0]
    assert (method, path) == ("POST", "/openxpki/api/v1/receipt")
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(raw) == {"serial": "0a"}


def test_api_error_keeps_code_message_and_retry_after(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers.append((429, _json({"error": {"code": "enroll.rate_limited", "message": "slow down"}}),
                           {"Retry-After": "30"}))
    with pytest.raises(ServerRefused) as raised:
        _client(url).post("enroll", {"code": "x"}, idempotent=False)
    assert raised.value.code == "enroll.rate_limited" and raised.value.message == "slow down"
    assert raised.value.status == 429 and raised.value.retry_after == 30.0


def test_api_error_keeps_the_refused_fields(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    problem = {"field": "csr", "code": "csr.parse", "message": "expected a PEM certificate request"}
    script.answers.append((422, _json({"error": {"code": "csr.parse", "message": "invalid input: csr: expected a PEM "
                                                 "certificate request", "fields": [problem, {"field": 1}]}}), {}))
    with pytest.raises(ServerRefused) as raised:
        _client(url).post("csr", {"csr": "x"})
    assert raised.value.fields == (FieldProblem("csr", "csr.parse", "expected a PEM certificate request"),)
    assert raised.value.code == "csr.parse" and raised.value.status == 422


def test_transient_errors_are_retried_on_idempotent_calls(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers += [(503, b"<html>busy</html>", {}), (502, b"", {}), (200, _json({"task": "done"}), {})]
    assert _client(url).get("task").body == {"task": "done"}
    assert len(script.seen) == 3


@pytest.mark.parametrize("status", [502, 504])
def test_a_call_that_may_have_run_is_not_sent_twice(scripted: tuple[Scripted, str], status: int) -> None:
    """502/504: the gateway lost the answer, the one-time code may be spent already."""
    script, url = scripted
    script.answers += [(status, b"", {}), (200, _json({"access_token": "t"}), {})]
    with pytest.raises(ServerUnreachable, match=f"HTTP {status}.*not available"):
        _client(url).post("enroll", {"code": "x"}, idempotent=False)
    assert len(script.seen) == 1


def test_a_503_is_retried_even_for_the_enrollment_code(scripted: tuple[Scripted, str]) -> None:
    """503: the server says it did not handle the request (the app rolls back first)."""
    script, url = scripted
    unavailable = _json({"error": {"code": "server.unavailable", "message": "no database"}})
    script.answers += [(503, unavailable, {"Retry-After": "0.05"}), (503, b"<html>down</html>", {}),
                       (200, _json({"access_token": "t"}), {})]
    assert _client(url).post("enroll", {"code": "x"}, idempotent=False).body == {"access_token": "t"}
    assert len(script.seen) == 3


def test_retries_honour_retry_after_capped_and_stop_at_the_window(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers += [(503, b"", {"Retry-After": "3600"})] * 3
    slept: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    client = ApiClient(url, allow_http_localhost=True, retry_window=100.0, sleep=sleep,
                       clock=lambda: now[0])
    with pytest.raises(ServerUnreachable, match="HTTP 503"):
        client.get("task")
    # An hour is capped at a minute; the second wait ends at the window (100 s).
    assert slept == [60.0, 40.0] and len(script.seen) == 3


def test_a_non_json_server_error_names_the_status(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers.append((500, b"<html>Internal Server Error</html>", {}))
    with pytest.raises(ServerUnreachable, match="HTTP 500 Internal Server Error: the server failed") as raised:
        _client(url).get("task")
    assert "check --server" not in raised.value.message and raised.value.code == "server.error"
    assert len(script.seen) == 1  # a server failure is not a transient one


def test_redirects_are_refused_not_followed(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers.append((302, b"", {"Location": "https://elsewhere.example/steal"}))
    client = _client(url)
    client.access_token = "secret-token"
    with pytest.raises(ProtocolError, match="redirected to https://elsewhere.example/steal"):
        client.get("task")
    assert len(script.seen) == 1


@pytest.mark.parametrize(("status", "body"), [(200, b"<html>login</html>"), (404, b"Not Found"),
                                              (200, b"[1, 2]")])
def test_answers_outside_the_api_are_protocol_errors(scripted: tuple[Scripted, str], status: int,
                                                     body: bytes) -> None:
    script, url = scripted
    script.answers.append((status, body, {}))
    with pytest.raises(ProtocolError, match="check --server"):
        _client(url).get("task")


def test_unreachable_server_is_a_network_error() -> None:
    client = ApiClient("http://127.0.0.1:9/", allow_http_localhost=True, retries=2, backoff=0.01)
    with pytest.raises(ServerUnreachable, match="cannot reach http://127.0.0.1:9"):
        client.get("task")


def test_unreadable_ca_file_is_a_usage_error(tmp_path: Any) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(UsageError, match="--ca-file"):
        ApiClient("https://127.0.0.1/", ca_file=bad)
