"""The token agent end to end against a SoftHSM token and a fake JSON API.

``FakeApi`` (``tests/support/fake_api.py``) plays the server side of
``docs/api.md`` on 127.0.0.1, so the agent runs exactly as against the real
server.
"""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from openxpki_py_token import api_client, cli, enroll
from openxpki_py_token.pkcs11.module import get_module
from pkcs11 import Attribute, ObjectClass
from support.fake_api import EC_P256, RSA_2048, CertSlot, FakeApi, default_slots, serve
from support.fake_api import spki_of as _spki
from support.softhsm import SoftHSMToken


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi(default_slots())
    server, url = serve(api)
    yield api, url
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """No second-long backoffs in unit tests."""
    original = api_client.ApiClient.__init__

    def init(self: api_client.ApiClient, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backoff", 0.01)
        original(self, *args, **kwargs)

    monkeypatch.setattr(api_client.ApiClient, "__init__", init)


def agent_args(token: SoftHSMToken, url: str, code: str, state_dir: Path, *extra: str,
               pin_file: Path | None = None) -> list[str]:
    # --code=…: a code may start with "-", which argparse would take for an option.
    return ["enroll", "--server", url, f"--code={code}", "--module", str(token.module),
            "--token-label", token.label, "--pin-file", str(pin_file or token.write_pin()),
            "--state-dir", str(state_dir), "--insecure-http-for-localhost", "--timeout", "30",
            *extra]


def run_agent(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def token_objects(token: SoftHSMToken) -> dict[str, list[dict[str, Any]]]:
    """Everything on the token, read through a separate login (as a checker would)."""
    lib = get_module(token.module).lib()
    found = [t for t in lib.get_tokens(token_label=token.label)]
    assert len(found) == 1
    result: dict[str, list[dict[str, Any]]] = {"private": [], "public": [], "cert": []}
    names = {"private": ObjectClass.PRIVATE_KEY, "public": ObjectClass.PUBLIC_KEY,
             "cert": ObjectClass.CERTIFICATE}
    with found[0].open(user_pin=token.pin) as session:
        for kind, cls in names.items():
            for obj in session.get_objects({Attribute.CLASS: cls}):
                row: dict[str, Any] = {"id": bytes(obj[Attribute.ID]), "label": obj[Attribute.LABEL]}
                if kind == "private":
                    for attr in (Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE,
                                 Attribute.ALWAYS_SENSITIVE, Attribute.TOKEN, Attribute.PRIVATE,
                                 Attribute.SIGN, Attribute.DECRYPT, Attribute.UNWRAP, Attribute.DERIVE,
                                 Attribute.KEY_TYPE):
                        row[attr.name] = obj[attr]
                if kind == "public":
                    row["object"] = obj
                    row["spki"] = _public_spki(obj)
                if kind == "cert":
                    row["cert"] = x509.load_der_x509_certificate(bytes(obj[Attribute.VALUE]))
                    row["serial_attr"] = bytes(obj[Attribute.SERIAL_NUMBER])
                    row["subject_attr"] = bytes(obj[Attribute.SUBJECT])
                result[kind].append(row)
            for row in result[kind]:
                row.pop("object", None)
    return result


def _public_spki(obj: Any) -> bytes:
    if obj[Attribute.KEY_TYPE] == pkcs11.KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big"),
                                       int.from_bytes(obj[Attribute.MODULUS], "big"))
        return _spki(numbers.public_key())
    point = bytes(obj[Attribute.EC_POINT])
    if point[0] == 0x04 and point[1] == len(point) - 2:
        point = point[2:]
    return _spki(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point))


# --- the full run ---------------------------------------------------------------------------


@pytest.mark.parametrize("second", [EC_P256, RSA_2048], ids=["ec-encryption", "rsa-encryption"])
def test_full_run_puts_two_keys_and_certificates_on_the_token(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        pkcs11_session_leak_check: None, second: dict[str, Any]) -> None:
    token = make_token("agent-full", pin="246810")
    api = FakeApi(default_slots(second))
    server, url = serve(api)
    try:
        code, out, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path / "state"))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert api.issued == 2
    lines = err.splitlines()
    assert lines[0].startswith("card found: SoftHSM v2 serial ")
    expected = [
        f"pairing phrase: {api.phrase}",  # the agent's own words, the same the server derived
        "  confirm on the web page only if it shows these same words",
        "waiting for you to confirm the card and the phrase in the browser…",
        "generating key 1/2 (authentication, RSA-2048) on the card…",
        "CSR sent; certificate issued",
        "writing certificate 1/2 to the card…",
        f"generating key 2/2 (encryption, {'EC P-256' if second is EC_P256 else 'RSA-2048'}) on the card…",
        "CSR sent; certificate issued",
        "writing certificate 2/2 to the card…",
        "done: 2 certificates on the card",
    ]
    assert lines[1:] == expected
    assert "authentication: serial" in out and "encryption: serial" in out

    # The card was reported as CK_TOKEN_INFO says, generic profile: no fixed slots.
    assert api.card is not None
    assert api.card["model"] == "SoftHSM v2" and api.card["label"] == "agent-full"
    assert api.card["card_profile"] == "generic" and "key_slots" not in api.card

    objects = token_objects(token)
    assert sorted(k["id"] for k in objects["private"]) == [b"\x01", b"\x02"]
    for key in objects["private"]:
        assert key["SENSITIVE"] and key["NEVER_EXTRACTABLE"] and key["ALWAYS_SENSITIVE"]
        assert not key["EXTRACTABLE"] and key["TOKEN"] and key["PRIVATE"] and key["SIGN"]
    by_id = {k["id"]: k for k in objects["private"]}
    assert not by_id[b"\x01"]["DECRYPT"] and not by_id[b"\x01"]["DERIVE"]
    if second is EC_P256:
        assert by_id[b"\x02"]["DERIVE"] and not by_id[b"\x02"]["DECRYPT"]
    else:
        assert by_id[b"\x02"]["DECRYPT"] and by_id[b"\x02"]["UNWRAP"]

    # Every CSR the server got is signed by, and certifies, a key on the token;
    # every certificate sits next to its key with the same CKA_ID.
    publics = {p["id"]: p["spki"] for p in objects["public"]}
    certs = {c["id"]: c for c in objects["cert"]}
    assert set(certs) == {b"\x01", b"\x02"}
    for slot in api.slots:
        assert slot.csr_pem is not None and slot.cert is not None and slot.installed
        csr = x509.load_pem_x509_csr(slot.csr_pem.encode())
        assert csr.is_signature_valid
        assert csr.subject.rfc4514_string() == f"CN={slot.cert_type}"
        key_id = bytes.fromhex(slot.key_id)
        assert slot.csr_key_id == slot.key_id
        assert _spki(csr.public_key()) == publics[key_id]
        on_card = certs[key_id]
        assert on_card["cert"] == slot.cert
        assert on_card["label"] == slot.cert_type
        assert on_card["subject_attr"] == slot.cert.subject.public_bytes()
        serial = slot.cert.serial_number
        assert int.from_bytes(on_card["serial_attr"][2:], "big") == serial
        assert on_card["serial_attr"][0] == 0x02 and on_card["serial_attr"][1] == len(on_card["serial_attr"]) - 2

    # Each call after the code carried the bearer token; the finished run left no state.
    assert api.paths()[:3] == ["POST /api/v1/enroll", "POST /api/v1/token", "GET /api/v1/task"]
    assert list((tmp_path / "state").iterdir()) == []
    _assert_no_pin(token, out + err, api)


def _assert_no_pin(token: SoftHSMToken, output: str, api: FakeApi, *pins: str) -> None:
    for pin in (token.pin, token.so_pin, *pins):
        assert pin not in output
        assert all(pin.encode() not in raw for raw in api.raw_requests)


def test_pending_approval_waits_then_installs(make_token: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    token = make_token("agent-pending")
    slots = default_slots()
    slots[0].pending_polls = 2
    api = FakeApi(slots, confirm_after=0)
    server, url = serve(api)
    try:
        code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert "CSR sent; waiting for approval" in err
    assert "waiting: waiting for approval" not in err  # said once, not per poll
    assert "waiting for you to confirm" not in err


# --- the next task in the answers (next_task) ------------------------------------------------


def _served_run(capsys: pytest.CaptureFixture[str], api: FakeApi, token: SoftHSMToken,
                state_dir: Path) -> tuple[int, str, str]:
    server, url = serve(api)
    try:
        return run_agent(capsys, agent_args(token, url, api.code, state_dir))
    finally:
        server.shutdown()
        server.server_close()


def test_carried_tasks_are_done_without_asking(make_token: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi(default_slots(), confirm_after=0, carry_next_task=True)
    code, out, err = _served_run(capsys, api, make_token("agent-carried"), tmp_path)
    assert code == 0, err
    assert api.paths() == ["POST /api/v1/enroll", "POST /api/v1/token"] + ["POST /api/v1/csr",
                                                                            "POST /api/v1/receipt"] * 2
    assert "done: 2 certificates on the card" in err and "encryption: serial" in out


def test_a_carried_wait_is_waited_out_then_polled(make_token: Any, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    slots = default_slots()
    slots[0].pending_polls = 3  # the CSR's answer carries a wait, and so do the next two polls
    api = FakeApi(slots, confirm_after=0, carry_next_task=True)
    code, _, err = _served_run(capsys, api, make_token("agent-carried-wait"), tmp_path)
    assert code == 0, err
    paths = api.paths()
    first_csr = paths.index("POST /api/v1/csr")
    assert paths[first_csr + 1:first_csr + 5] == ["GET /api/v1/task"] * 3 + ["POST /api/v1/receipt"], paths
    assert "GET /api/v1/task" not in paths[first_csr + 5:]
    assert err.count("waiting for approval") == 1  # "CSR sent; waiting for approval", not per wait


def test_a_carried_failed_task_ends_the_run(make_token: Any, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApi(default_slots(), confirm_after=0, carry_next_task=True)
    api.fail_task = ("csr.rejected", "the RA operator rejected the request")
    code, _, err = _served_run(capsys, api, make_token("agent-carried-failed"), tmp_path)
    assert code == cli.EXIT_REFUSED
    assert "the RA operator rejected the request [csr.rejected]" in err
    assert "GET /api/v1/task" not in api.paths()


class _GarbledNextTask(FakeApi):
    """Answers the card report with a next_task that is no task object."""

    def report_token(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        status, answer, extra = super().report_token(body)
        return status, {**answer, "next_task": "generate_key"}, extra


def test_a_carried_task_that_is_no_object_is_a_protocol_error(make_token: Any, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    api = _GarbledNextTask(default_slots(), confirm_after=0)
    code, _, err = _served_run(capsys, api, make_token("agent-garbled"), tmp_path)
    assert code == cli.EXIT_FAILED, err
    assert "next_task is not a task object" in err
    assert api.paths() == ["POST /api/v1/enroll", "POST /api/v1/token"]  # nothing done with it


# --- restarting -----------------------------------------------------------------------------


class _Interrupt:
    """Makes ApiClient.post raise KeyboardInterrupt (Ctrl-C) before sending one request."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: str, body_match: dict[str, str]) -> None:
        self.fired = False
        original = api_client.ApiClient.post

        def post(client: api_client.ApiClient, p: str, body: dict[str, Any], **kw: Any) -> Any:
            if not self.fired and p == path and all(body.get(k) == v for k, v in body_match.items()):
                self.fired = True
                raise KeyboardInterrupt
            return original(client, p, body, **kw)

        monkeypatch.setattr(api_client.ApiClient, "post", post)


def test_rerun_after_interrupt_reuses_the_uncertified_key(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, fake_api: tuple[FakeApi, str],
        pkcs11_session_leak_check: None) -> None:
    api, url = fake_api
    token = make_token("agent-restart")
    state_dir = tmp_path / "state"
    interrupt = _Interrupt(monkeypatch, "csr", {"cert_type": "encryption"})

    code, _, err = run_agent(capsys, agent_args(token, url, api.code, state_dir))
    assert interrupt.fired and code == cli.EXIT_FAILED
    assert "interrupted; run the same command again to continue" in err
    # Key 2 was generated but never sent: the server does not know it.
    assert api.slots[1].csr_pem is None
    first = token_objects(token)
    assert sorted(k["id"] for k in first["private"]) == [b"\x01", b"\x02"]
    saved = list(state_dir.glob("enrollment-*.json"))
    assert len(saved) == 1
    # The keys this workflow generated, for the rerun: IDs and public key hashes only.
    created = list(state_dir.glob("created-keys-*.json"))
    assert len(created) == 1 and stat.S_IMODE(created[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(saved[0].stat().st_mode) == 0o600
    assert api.code not in saved[0].read_text() and token.pin not in saved[0].read_text()

    requests_before = len(api.requests)
    code, _, err = run_agent(capsys, agent_args(token, url, api.code, state_dir))
    assert code == 0, err
    rerun = api.paths()[requests_before:]
    assert "POST /api/v1/enroll" not in rerun  # the saved access token was used
    assert "key 2/2 (encryption, EC P-256) is already on the card (ID 02), not yet certified: using it" in err
    assert "generating key" not in err
    second = token_objects(token)
    assert len(second["private"]) == 2 and len(second["public"]) == 2
    public_02 = next(p["spki"] for p in first["public"] if p["id"] == b"\x02")
    assert api.slots[1].csr_pem is not None
    assert _spki(x509.load_pem_x509_csr(api.slots[1].csr_pem.encode()).public_key()) == public_02
    assert api.issued == 2
    assert list(state_dir.iterdir()) == []


def test_rerun_after_interrupt_before_receipt_only_confirms(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    token = make_token("agent-receipt")
    interrupt = _Interrupt(monkeypatch, "receipt", {"cert_type": "authentication"})
    code, _, _ = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    assert interrupt.fired and code == cli.EXIT_FAILED
    assert len(token_objects(token)["cert"]) == 1

    code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    assert code == 0, err
    assert "certificate 1/2 is already on the card" in err
    assert "generating key 1/2" not in err
    objects = token_objects(token)
    assert len(objects["cert"]) == 2 and len(objects["private"]) == 2
    assert api.issued == 2


def test_rerun_with_expired_session_asks_for_a_new_code(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApi(default_slots(), expires_in=10)  # inside the agent's safety margin
    server, url = serve(api)
    try:
        token = make_token("agent-expired")
        _Interrupt(monkeypatch, "csr", {"cert_type": "authentication"})
        assert run_agent(capsys, agent_args(token, url, api.code, tmp_path))[0] == cli.EXIT_FAILED
        code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert code == cli.EXIT_REFUSED
    assert "[enroll.code_used]" in err and "its session has expired" in err
    assert "reload the personalization page for a new code" in err


def test_existing_certified_key_is_never_touched(make_token: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 fake_api: tuple[FakeApi, str]) -> None:
    """A key under the suggested ID that has a certificate stays; the agent takes 0101."""
    api, url = fake_api
    token = make_token("agent-occupied")
    first = FakeApi(default_slots()[:1])
    server, first_url = serve(first)
    try:
        assert run_agent(capsys, agent_args(token, first_url, first.code, tmp_path))[0] == 0
    finally:
        server.shutdown()
        server.server_close()
    code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    assert code == 0, err
    assert api.slots[0].csr_key_id == "0101"
    ids = sorted(c["id"] for c in token_objects(token)["cert"])
    assert ids == [b"\x01", b"\x01\x01", b"\x02"]


# --- failures -------------------------------------------------------------------------------


def test_wrong_pin_is_exit_3_and_keeps_the_code(make_token: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               fake_api: tuple[FakeApi, str],
                                               pkcs11_session_leak_check: None) -> None:
    api, url = fake_api
    token = make_token("agent-wrong-pin", pin="135799")
    wrong = token.write_pin(pin="975311")
    code, out, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path, pin_file=wrong))
    assert code == cli.EXIT_CARD
    assert "card problem:" in err and "refused the PIN" in err and "run again with the right PIN" in err
    assert api.requests == []  # the one-time code was not spent
    _assert_no_pin(token, out + err, api, "975311")


def test_pin_from_environment_and_verbose_never_show_it(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, fake_api: tuple[FakeApi, str],
        caplog: pytest.LogCaptureFixture) -> None:
    api, url = fake_api
    token = make_token("agent-env-pin", pin="864200")
    monkeypatch.setenv("CARD_PIN", token.pin)
    args = agent_args(token, url, api.code, tmp_path, "-v")
    args[args.index("--pin-file"):args.index("--pin-file") + 2] = ["--pin-env", "CARD_PIN"]
    caplog.set_level("DEBUG")
    code, out, err = run_agent(capsys, args)
    assert code == 0, err
    _assert_no_pin(token, out + err + caplog.text, api)
    assert all(token.pin not in str(body) for _, _, body in api.requests)


def test_missing_pin_without_terminal_is_a_usage_error(make_token: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    token = make_token("agent-no-pin")
    args = agent_args(token, url, api.code, tmp_path)
    del args[args.index("--pin-file"):args.index("--pin-file") + 2]
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_USAGE
    assert "pass --pin-file/--pin-env" in err


@pytest.mark.parametrize(("path", "status", "error_code", "message"), [
    ("/api/v1/enroll", 401, "enroll.code_invalid", "this enrollment code is not valid"),
    ("/api/v1/token", 403, "token.owned_by_other", "this card is registered to bob"),
    ("/api/v1/csr", 422, "csr.key_reused", "this public key was certified before"),
])
def test_server_refusal_is_exit_4_with_code_and_message(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fake_api: tuple[FakeApi, str], path: str, status: int, error_code: str, message: str) -> None:
    api, url = fake_api
    api.refuse[path] = (status, error_code, message)
    token = make_token("agent-refused")
    code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    assert code == cli.EXIT_REFUSED
    assert f"the server refused: {message} [{error_code}]" in err


def test_rate_limit_shows_the_wait(make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    api.refuse["/api/v1/enroll"] = (429, "enroll.rate_limited", "too many attempts")
    code, _, err = run_agent(capsys, agent_args(make_token("agent-429"), url, api.code, tmp_path))
    assert code == cli.EXIT_REFUSED
    assert "[enroll.rate_limited]" in err and "wait 7 s" in err
    assert api.paths().count("POST /api/v1/enroll") == 1  # the code is never sent twice


def test_failed_task_is_exit_4_and_forgets_the_session(make_token: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    api.fail_task = ("csr.rejected", "the RA operator rejected the request")
    code, _, err = run_agent(capsys, agent_args(make_token("agent-failed"), url, api.code, tmp_path))
    assert code == cli.EXIT_REFUSED
    assert "the RA operator rejected the request [csr.rejected]" in err
    assert list(tmp_path.iterdir()) == []


def test_overall_timeout_stops_waiting(make_token: Any, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str],
                                      fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    api.confirm_after = 10_000
    args = agent_args(make_token("agent-timeout"), url, api.code, tmp_path)
    args[args.index("--timeout") + 1] = "0.5"
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_FAILED
    assert "stopped waiting after" in err and "run the same command again" in err
    assert len(list(tmp_path.iterdir())) == 1  # kept for the rerun


def test_waiting_obeys_the_timeout_not_a_count_of_polls(make_token: Any, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       fake_api: tuple[FakeApi, str]) -> None:
    """The user takes long to confirm: the agent polls for all of --timeout (not 100 polls)."""
    api, url = fake_api
    api.confirm_after = 10_000
    now = [0.0]  # a monotonic clock that the agent's sleeps advance: no real waiting

    def sleep(seconds: float) -> None:
        now[0] += seconds

    original = enroll.TokenAgent.__init__

    def init(self: enroll.TokenAgent, *args: Any, **kwargs: Any) -> None:
        kwargs.update(sleep=sleep, clock=lambda: now[0])
        original(self, *args, **kwargs)

    monkeypatch.setattr(enroll.TokenAgent, "__init__", init)
    args = agent_args(make_token("agent-long-wait"), url, api.code, tmp_path)
    args[args.index("--timeout") + 1] = "60"
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_FAILED, err
    assert err.strip().splitlines()[-1].startswith("openxpki-py-token: stopped waiting after 60 s "
                                                   "(confirm the card in your browser)")
    # The server's retry_after of 0 is clamped to 0.2 s: 60 s are 300 polls.
    assert api.polls >= 300 and 60.0 <= now[0] < 60.5
    assert len(list(tmp_path.glob("enrollment-*.json"))) == 1  # kept for the rerun


def test_unknown_token_label_and_slot_are_exit_3(make_token: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    token = make_token("agent-present")
    args = agent_args(token, url, api.code, tmp_path)
    args[args.index("--token-label") + 1] = "no-such-card"
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_CARD
    assert "no card labelled 'no-such-card'" in err and "'agent-present'" in err

    args[args.index("--token-label"):args.index("--token-label") + 2] = ["--slot", "4242"]
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_CARD
    assert "there is no slot 4242" in err
    assert api.requests == []


def test_blank_token_in_slot_is_exit_3(make_token: Any, tmp_path: Path, softhsm: Any,
                                       capsys: pytest.CaptureFixture[str],
                                       fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    token = make_token("agent-blank-neighbour")
    blank = []
    for slot in get_module(token.module).lib().get_slots(token_present=True):
        try:  # slots of tokens other tests deleted answer GeneralError
            if not slot.get_token().flags & pkcs11.TokenFlag.TOKEN_INITIALIZED:
                blank.append(slot.slot_id)
        except pkcs11.PKCS11Error:
            continue
    assert blank, "SoftHSM always offers one free slot"
    args = agent_args(token, url, api.code, tmp_path)
    args[args.index("--token-label"):args.index("--token-label") + 2] = ["--slot", str(blank[0])]
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_CARD
    assert f"the card in slot {blank[0]} is not initialised" in err


# --- TLS --------------------------------------------------------------------------------------


def _tls_server_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TLS CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_is_verified(make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, cert, key = _tls_server_files(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    api = FakeApi(default_slots())
    server, url = serve(api, tls=context)
    token = make_token("agent-tls")
    try:
        base = agent_args(token, url, api.code, tmp_path / "state")
        base.remove("--insecure-http-for-localhost")
        code, _, err = run_agent(capsys, base)
        assert code == cli.EXIT_NETWORK
        assert "network problem: the TLS certificate of https://127.0.0.1:" in err
        assert "pass it with --ca-file" in err
        assert api.requests == []

        code, _, err = run_agent(capsys, [*base, "--ca-file", str(ca)])
        assert code == 0, err
        assert api.issued == 2
    finally:
        server.shutdown()
        server.server_close()


def test_plain_http_needs_the_flag_and_localhost(make_token: Any, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    args = agent_args(make_token("agent-http"), url, api.code, tmp_path)
    args.remove("--insecure-http-for-localhost")
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_USAGE and "needs --insecure-http-for-localhost" in err
    args[args.index("--server") + 1] = "http://pki.example.org/openxpki"
    code, _, err = run_agent(capsys, args)
    assert code == cli.EXIT_USAGE and "plain http is refused" in err
    assert api.requests == []


def test_state_dir_is_private(tmp_path: Path) -> None:
    from openxpki_py_token.state import EnrollmentSession, StateStore

    store = StateStore(tmp_path / "s")
    session = EnrollmentSession("http://127.0.0.1:1/", 3, "alice", "tok", 1e12)
    path = store.save("CODE", session)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load("http://127.0.0.1:1/", "CODE") == session
    assert store.load("http://127.0.0.1:1/", "OTHER") is None
    os.chmod(path, 0o644)  # readable by others: not trusted any more
    assert store.load("http://127.0.0.1:1/", "CODE") is None


# --- card profiles ------------------------------------------------------------------------------


def test_openpgp_profile_refuses_an_encryption_key_it_cannot_prove(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The OpenPGP decryption key cannot sign: say so before touching the card."""
    api = FakeApi([CertSlot("encryption", RSA_2048, "02", "decrypt")])
    server, url = serve(api)
    token = make_token("agent-openpgp")
    try:
        args = agent_args(token, url, api.code, tmp_path, "--card-profile", "openpgp",
                          "--so-pin-env", "AGENT_SO_PIN")
        os.environ["AGENT_SO_PIN"] = token.so_pin
        try:
            code, out, err = run_agent(capsys, args)
        finally:
            del os.environ["AGENT_SO_PIN"]
    finally:
        server.shutdown()
        server.server_close()
    assert code == cli.EXIT_CARD
    assert "encryption key (ID 02, 'Encryption key') cannot sign" in err
    assert api.card is not None and api.card["card_profile"] == "openpgp"
    keys = ["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"]
    common = {"algorithms": keys, "key_generation": "admin_pin", "object_write": "admin_pin", "can_import": True}
    # Slot 02 takes an escrowed RSA key (the card's own import), but keeps no earlier ones: it is the only one.
    assert api.card["key_slots"] == [
        {"key_id": "01", "label": "Signature key", "usage": "sign", "can_sign": True, "can_decrypt": False,
         "cert_types": ["signature"], "default_for_usage": False, "key_history": True, "import_algorithms": [],
         **common},
        {"key_id": "02", "label": "Encryption key", "usage": "decrypt", "can_sign": False, "can_decrypt": True,
         "cert_types": ["encryption"], "default_for_usage": True, "key_history": False,
         "import_algorithms": keys[:3], **common},
        {"key_id": "03", "label": "Authentication key", "usage": "sign", "can_sign": True, "can_decrypt": False,
         "cert_types": ["authentication"], "default_for_usage": True, "key_history": True, "import_algorithms": [],
         **common},
    ]
    assert token_objects(token)["private"] == []
    _assert_no_pin(token, out + err, api)


def test_profile_needing_the_so_pin_asks_for_it(make_token: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    token = make_token("agent-so-pin")
    code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path, "--card-profile", "openpgp"))
    assert code == cli.EXIT_USAGE
    assert "SO (admin) PIN" in err and "--so-pin-file/--so-pin-env" in err
    # Without --so-pin-* the agent first asks the server for the card's derived
    # admin PIN (released only for a confirmed card, so after the code is
    # traded); this server has none, so the SO PIN is asked for then, before
    # anything is generated.  The saved session lets a rerun with the option continue.
    assert [path for _, path, _ in api.requests][-1] == "/api/v1/card-credentials"
    assert token_objects(token)["private"] == []


def test_fixed_slot_card_with_reinitialisation(make_token: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               fake_api: tuple[FakeApi, str],
                                               pkcs11_session_leak_check: None) -> None:
    """A card with fixed key IDs whose driver needs C_Finalize/C_Initialize after keygen.

    SoftHSM plays it with user logins (its SO cannot own private keys); the
    agent must use the card's IDs and labels, report them, and find the keys
    again after re-initialising the module.
    """
    from openxpki_py_token import card_profiles

    fixed = card_profiles.CardProfile(
        name="fixed", description="test card", detect=("fixed-card",),
        slots=(card_profiles.KeySlot("0a", "Card auth key", "sign", ("authentication",)),
               card_profiles.KeySlot("0b", "Card enc key", "decrypt", ("encryption",))),
        keygen_login="user", cert_write_login="user", reinit_after_keygen=True)
    monkeypatch.setitem(card_profiles.CARD_PROFILES, "fixed", fixed)
    api, url = fake_api
    token = make_token("fixed-card-1")
    code, _, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))  # auto-detected
    assert code == 0, err
    assert api.card is not None and api.card["card_profile"] == "fixed"
    assert [s.csr_key_id for s in api.slots] == ["0a", "0b"]
    objects = token_objects(token)
    assert sorted((c["id"], c["label"]) for c in objects["cert"]) == [
        (b"\x0a", "authentication"), (b"\x0b", "encryption")]
    assert sorted(k["label"] for k in objects["private"]) == ["Card auth key", "Card enc key"]

    # A second personalization of the same card replaces the keys in its fixed
    # slots; interrupted after the new key, the rerun uses that key although
    # the old certificate is still in the slot.
    again = FakeApi(default_slots())
    server, again_url = serve(again)
    interrupt = _Interrupt(monkeypatch, "csr", {"cert_type": "authentication"})
    try:
        code, _, err = run_agent(capsys, agent_args(token, again_url, again.code, tmp_path))
        assert interrupt.fired and code == cli.EXIT_FAILED
        assert "note: this replaces the key in slot 0a and its certificate CN=Alice (authentication)" in err
        code, _, err = run_agent(capsys, agent_args(token, again_url, again.code, tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0, err
    assert "key 1/2 (authentication, RSA-2048) is already on the card (ID 0a)" in err
    objects = token_objects(token)
    assert sorted(k["id"] for k in objects["private"]) == [b"\x0a", b"\x0b"]
    assert {c["cert"] for c in objects["cert"]} == {s.cert for s in again.slots}


def test_fixed_slot_refuses_a_key_it_cannot_make_before_touching_the_card(
        make_token: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot that makes only P-256 keys, asked for RSA-2048 (an older server that did not plan): refused, exit 3."""
    from openxpki_py_token import card_profiles

    p256_only = card_profiles.CardProfile(
        name="p256card", description="test card", detect=("p256-card",),
        slots=(card_profiles.KeySlot("0a", "Card auth key", "sign", ("authentication",), algorithms=("ec-p256",)),),
        keygen_login="user", cert_write_login="user", reinit_after_keygen=False)
    monkeypatch.setitem(card_profiles.CARD_PROFILES, "p256card", p256_only)
    api = FakeApi([CertSlot("authentication", RSA_2048, "01", "sign")])
    server, url = serve(api)
    token = make_token("p256-card-1")
    try:
        code, out, err = run_agent(capsys, agent_args(token, url, api.code, tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert code == cli.EXIT_CARD, err
    assert "slot 0a cannot make RSA-2048 keys (it makes ec-p256)" in err
    assert api.card is not None and api.card["key_slots"][0]["algorithms"] == ["ec-p256"]
    assert token_objects(token)["private"] == []
