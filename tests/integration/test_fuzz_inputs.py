"""No input earns a 500: every API endpoint and form, fuzzed, on SQLite and PostgreSQL.

The real WSGI app in-process, with a personalization waiting for CSRs, a
CA key in SoftHSM and the LDIF directory.  Hypothesis generates JSON bodies,
form fields, path ids and serials per endpoint (seeded: ``derandomize``, no
example database, so every run sends the same inputs); each answer must be
below 500 — a refusal with a stable code, never a server error.  The
hand-written tests after the fuzzers pin the inputs the first fuzz run found
(issue 3): a CSR whose key cryptography does not support, ids above 2^63, a
NUL byte in a posted role (which must still be audited).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from test_personalization_server import Agent, Browser, confirmed_agent
from werkzeug.test import Client

from openxpki_py.db.schema import audit_log
from openxpki_py.web.app import create_app

# Inputs per endpoint and form, on each database (the issue asks for ≥ 2,000).
EXAMPLES = 2000
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

EC_CURVE_P256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7 (prime256v1), DER
EC_CURVE_UNKNOWN = bytes.fromhex("06082a8648ce3d030163")  # 1.2.840.10045.3.1.99: no curve cryptography knows
EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
UNKNOWN_KEY_ALGORITHM = bytes.fromhex("06072a8648ce3d02ff")  # 1.2.840.10045.2.255: no key algorithm


def _csr_der(key: Any, digest: Any = hashes.SHA256()) -> bytes:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "card")]))
            .sign(key, digest).public_bytes(serialization.Encoding.DER))


def _pem(der: bytes) -> str:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"


@cache
def csr_pool() -> tuple[bytes, ...]:
    """DER CSRs of every kind: allowed and refused keys, and keys cryptography cannot load at all."""
    p256 = _csr_der(ec.generate_private_key(ec.SECP256R1()))
    return (
        _csr_der(rsa.generate_private_key(65537, 2048)),
        _csr_der(rsa.generate_private_key(65537, 1024)),
        _csr_der(rsa.generate_private_key(3, 2048)),
        p256,
        _csr_der(ec.generate_private_key(ec.SECP384R1())),
        _csr_der(ec.generate_private_key(ec.SECP256K1())),
        _csr_der(ed25519.Ed25519PrivateKey.generate(), None),
        p256.replace(EC_CURVE_P256, EC_CURVE_UNKNOWN),
        p256.replace(EC_PUBLIC_KEY, UNKNOWN_KEY_ALGORITHM),
    )


def _mutated(der: bytes, position: int, value: int) -> bytes:
    index = position % len(der)
    return der[:index] + bytes([value]) + der[index + 1:]


texts = st.text(max_size=80) | st.sampled_from(["", "\x00", "a\x00b", "User", "authentication", "encryption",
                                                "\ud7ff", "../../etc/passwd", "' OR 1=1 --", "%00", "x" * 5000])
numbers = st.integers(min_value=-(2**70), max_value=2**70)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=4,
)
csr_texts = st.one_of(
    st.sampled_from(range(9)).map(lambda i: _pem(csr_pool()[i])),
    st.tuples(st.sampled_from(range(9)), st.integers(0, 10_000), st.integers(0, 255)).map(
        lambda t: _pem(_mutated(csr_pool()[t[0]], t[1], t[2]))),
    texts,
)
# Path segments: ids in and beyond BIGINT, and text that is no id at all.
path_ids = numbers.map(str) | st.sampled_from(["9223372036854775807", "9223372036854775808", "1" * 40]) | texts


def _bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A body with the endpoint's own keys (typed right or wrong), any JSON, or raw bytes."""
    typed = st.fixed_dictionaries({}, optional={name: strategy | json_values for name, strategy in fields.items()})
    return st.one_of(typed, typed, typed, json_values, st.binary(max_size=300))


def _post_json(agent: Agent, path: str, body: Any, *, authorization: str | None = None) -> Any:
    headers = {"Authorization": authorization if authorization is not None else f"Bearer {agent.access_token}"}
    data = body if isinstance(body, bytes) else json.dumps(body)
    return agent.client.post(f"/api/v1/{path}", data=data, headers=headers, content_type="application/json")


def _no_server_error(response: Any, what: object) -> None:
    assert response.status_code < 500, f"{what!r} → {response.status_code}: {response.get_data(as_text=True)[:500]}"
    if response.status_code >= 400 and response.mimetype == "application/json":
        assert response.json["error"]["code"], response.json  # a refusal names its stable code


class Scene:
    """alice's personalization waiting for CSRs, her agent, and bob as RA Operator."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.alice, self.wf_id, self.agent = confirmed_agent(app, "CARD-FUZZ")
        self.alice_page = self.alice.get(f"/deeplink/workflow/{self.wf_id}").text
        self.bob = Browser(app, "bob")
        choice = self.bob.get("/login").text
        assert self.bob.post("/login", {"csrf_token": self.bob.csrf(choice), "role": "RA Operator"}
                             ).status_code == 303
        self.bob_csrf = self.bob.csrf(self.bob.get("/approvals").text)

    def alice_csrf(self) -> str:
        return self.alice.csrf(self.alice.get(f"/deeplink/workflow/{self.wf_id}").text)


@pytest.fixture
def scene(make_instance: Callable[..., Any], db_engine: Any) -> Iterator[Scene]:
    def with_ra(settings_: dict[str, Any]) -> None:
        settings_["auth"]["roles"]["RA Operator"] = {"command": ["/bin/true"], "users": ["bob", "carol"]}
    inst = make_instance(db_engine, overrides=with_ra)
    yield Scene(create_app(inst.config, inst.services))


# --- the JSON API ------------------------------------------------------------------

def test_fuzz_api_enroll(scene: Scene) -> None:
    @FUZZ
    @given(_bodies({"code": texts}))
    def check(body: Any) -> None:
        _no_server_error(_post_json(scene.agent, "enroll", body, authorization=""), body)
    check()


def test_fuzz_api_token(scene: Scene) -> None:
    slot = st.fixed_dictionaries({}, optional={
        "key_id": st.sampled_from(["01", "9a", "zz", ""]) | json_values, "label": texts | json_values,
        "usage": st.sampled_from(["sign", "decrypt", "wrap"]) | json_values, "can_sign": json_values,
        "can_decrypt": json_values, "algorithms": st.lists(st.sampled_from(["rsa-2048", "ec-p256", "dsa"]) | texts),
        "key_generation": st.sampled_from(["admin_pin", "management_key", "root"]) | json_values,
        "object_write": json_values, "cert_types": st.lists(texts) | json_values, "default_for_usage": json_values})
    @FUZZ
    @given(_bodies({"serial": texts, "model": texts, "manufacturer": texts, "label": texts,
                    "card_profile": st.sampled_from(["piv", "openpgp", "generic-pkcs11"]) | texts,
                    "key_slots": st.lists(slot, max_size=40)}))
    def check(body: Any) -> None:
        _no_server_error(_post_json(scene.agent, "token", body), body)
    check()


def test_fuzz_api_task(scene: Scene) -> None:
    @FUZZ
    @given(st.one_of(texts.map(lambda t: f"Bearer {t}"), texts, st.just(f"Bearer {scene.agent.access_token}")))
    def check(authorization: str) -> None:
        try:
            response = scene.agent.client.get("/api/v1/task", headers={"Authorization": authorization})
        except ValueError:  # Werkzeug's client refuses to send a header with a newline: nothing to test
            return
        _no_server_error(response, authorization)
    check()


def test_fuzz_api_csr(scene: Scene) -> None:
    @FUZZ
    @given(_bodies({"csr": csr_texts, "cert_type": texts, "key_id": texts, "token_serial": texts}),
           st.sampled_from(["authentication", "encryption"]), csr_texts, st.booleans())
    def check(body: Any, cert_type: str, csr: str, complete: bool) -> None:
        if complete:  # most posts well-formed enough to reach the workflow and its validators
            body = {"cert_type": cert_type, "key_id": "01", "csr": csr, "token_serial": "CARD-FUZZ"}
        _no_server_error(_post_json(scene.agent, "csr", body), body)
    check()


def test_fuzz_api_receipt(scene: Scene) -> None:
    @FUZZ
    @given(_bodies({"cert_type": texts, "serial": texts | numbers.map(lambda n: format(abs(n), "x")),
                    "token_serial": texts}))
    def check(body: Any) -> None:
        _no_server_error(_post_json(scene.agent, "receipt", body), body)
    check()


# --- the pages' forms and paths -------------------------------------------------------

def _form(client: Client, path: str, form: dict[str, str], env: dict[str, str]) -> Any:
    return client.post(path, data=form, environ_overrides=env)


def test_fuzz_login_form(scene: Scene) -> None:
    carol = Browser(scene.app, "carol")  # offered two roles: /login shows the choice
    token = [carol.csrf(carol.get("/login").text)]

    @FUZZ
    @given(texts, texts, st.booleans())
    def check(role: str, next_path: str, with_token: bool) -> None:
        form = {"role": role, "next": next_path, **({"csrf_token": token[0]} if with_token else {})}
        answer = _form(carol.client, "/login", form, carol.env)
        _no_server_error(answer, form)
        if answer.status_code == 303:  # a role was granted: the session has a new CSRF token
            token[0] = carol.csrf(carol.get("/login").text)
    check()


def test_fuzz_personalization_forms(scene: Scene) -> None:
    alice = scene.alice
    token = scene.alice_csrf()

    @FUZZ
    @given(path_ids | st.just(str(scene.wf_id)), st.sampled_from(["code", "action"]), texts,
           st.sampled_from(["confirm_token", "reject_token", "cancel", "withdraw"]) | texts, path_ids | texts,
           st.sampled_from(["deeplink", "menu"]) | texts)
    def check(wf_id: str, form: str, _noise: str, action: str, version: str, mode: str) -> None:
        fields = {"csrf_token": token, "action": action, "version": version, "mode": mode}
        _no_server_error(_form(alice.client, f"/personalize/{wf_id}/{form}", fields, alice.env), (wf_id, fields))
    check()


def test_fuzz_approval_form(scene: Scene) -> None:
    bob = scene.bob

    @FUZZ
    @given(path_ids | st.just(str(scene.wf_id + 1)), st.sampled_from(["approve", "reject"]) | texts,
           path_ids, texts)
    def check(wf_id: str, decision: str, version: str, text: str) -> None:
        fields = {"csrf_token": scene.bob_csrf, "decision": decision, "version": version, "text": text}
        _no_server_error(_form(bob.client, f"/approvals/{wf_id}", fields, bob.env), (wf_id, fields))
    check()


def test_fuzz_page_paths(scene: Scene) -> None:
    alice = scene.alice
    pages = ["/deeplink/workflow/{id}", "/personalize/{id}", "/personalize/{id}/status",
             "/personalize/{id}/certificate/{serial}.pem", "/certificates/{serial}.pem"]

    @FUZZ
    @given(st.sampled_from(pages), path_ids | st.just(str(scene.wf_id)), texts | path_ids)
    def check(page: str, wf_id: str, serial: str) -> None:
        from urllib.parse import quote

        path = page.format(id=quote(wf_id, safe=""), serial=quote(serial, safe=""))
        _no_server_error(alice.client.get(path, environ_overrides=alice.env), path)
    check()


# --- what the first fuzz run found (issue 3) ------------------------------------------

# Each a byte string swapped in an EC P-256 CSR, and the refusal codes allowed.  One
# scene for all (a scene costs seconds: CA key, personalization): none changes it.
UNLOADABLE_CSRS = {
    "unknown-curve": (EC_CURVE_P256, EC_CURVE_UNKNOWN, {"csr.parse", "csr.signature"}),
    "unknown-key-algorithm": (EC_PUBLIC_KEY, UNKNOWN_KEY_ALGORITHM, {"csr.parse", "csr.signature"}),
    # A later full run: cryptography's InvalidVersion is no ValueError.  The request's
    # first INTEGER is its version: 0 → 96.
    "unknown-version": (b"\x02\x01\x00", b"\x02\x01\x60", {"csr.parse"}),
}


def test_csr_cryptography_cannot_load_is_refused(scene: Scene) -> None:
    for name, (old, new, codes) in UNLOADABLE_CSRS.items():
        der = _csr_der(ec.generate_private_key(ec.SECP256R1()))
        bad = der.replace(old, new, 1)
        assert bad != der, name
        answer = _post_json(scene.agent, "csr", {"cert_type": "authentication", "key_id": "01", "csr": _pem(bad),
                                                  "token_serial": "CARD-FUZZ"})
        assert answer.status_code == 422, (name, answer.get_data(as_text=True))
        assert answer.json["error"]["code"] in codes, (name, answer.json)


def test_ids_beyond_bigint_are_not_found(scene: Scene) -> None:
    for path in ("/deeplink/workflow/{big}", "/personalize/{big}", "/personalize/{big}/status",
                 "/personalize/{big}/certificate/01.pem"):
        for big in (2**63, 2**64 + 1, 10**30):
            answer = scene.alice.get(path.format(big=big))
            assert answer.status_code == 404, (path.format(big=big), answer.get_data(as_text=True))
    bob = scene.bob
    posted = bob.post(f"/approvals/{2**63}", {"csrf_token": scene.bob_csrf, "decision": "approve", "version": "1"})
    assert posted.status_code == 404


def test_role_with_a_nul_byte_is_refused_and_audited(scene: Scene) -> None:
    carol = Browser(scene.app, "carol")
    token = carol.csrf(carol.get("/login").text)
    refused = carol.post("/login", {"csrf_token": token, "role": "User\x00Admin"})
    assert refused.status_code == 403, refused.get_data(as_text=True)
    with scene.app.db.connect() as conn:
        rows = conn.execute(select(audit_log.c.actor, audit_log.c.role_name, audit_log.c.outcome)
                            .where(audit_log.c.event == "auth.role.refused")).all()
    assert ("carol", "User\\x00Admin", "refused") in [tuple(r) for r in rows]


def test_api_text_with_nul_or_lone_surrogate_is_refused(scene: Scene) -> None:
    for serial in ("CARD\x00", "\ud800"):
        answer = _post_json(scene.agent, "token", {"serial": serial})
        assert answer.status_code == 400 and answer.json["error"]["code"] == "request.invalid", answer.json


# --- identical calls at once (issue 6) ------------------------------------------------

def _at_once(count: int, call: Callable[[], Any]) -> list[Any]:
    import threading

    barrier, answers = threading.Barrier(count), [None] * count

    def run(i: int) -> None:
        barrier.wait()
        answers[i] = call()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def test_identical_csr_posts_and_receipts_at_once_get_the_same_answer(scene: Scene) -> None:
    key = rsa.generate_private_key(65537, 2048)
    body = {"cert_type": "authentication", "key_id": "01", "csr": _pem(_csr_der(key)), "token_serial": "CARD-FUZZ"}
    agent = scene.agent

    def post_csr() -> Any:
        return Agent(scene.app).client.post("/api/v1/csr", json=body,
                                            headers={"Authorization": f"Bearer {agent.access_token}"})
    answers = _at_once(12, post_csr)
    assert [a.status_code for a in answers if a.status_code not in (200, 202)] == [], \
        [a.get_data(as_text=True) for a in answers]
    serials = {a.json["serial"] for a in answers if a.status_code == 200}
    assert len(serials) == 1, serials  # one certificate, whatever answer each post got
    receipt = {"cert_type": "authentication", "serial": serials.pop(), "token_serial": "CARD-FUZZ"}

    def post_receipt() -> Any:
        return Agent(scene.app).client.post("/api/v1/receipt", json=receipt,
                                            headers={"Authorization": f"Bearer {agent.access_token}"})
    receipts = _at_once(12, post_receipt)
    assert [(r.status_code, r.json["status"]) for r in receipts] == [(200, "installed")] * 12
    # The next task is the workflow's at the moment of each answer: the next key, or (a repeat that read
    # it while the winner's automatic step still ran) a wait, after which the agent asks.
    after = agent.call("GET", "task").json
    assert after["task"] == "generate_key"
    working = {"task": "wait", "reason": "the server is working", "retry_after": 1}
    assert all(r.json["next_task"] in (after, working) for r in receipts), [r.json for r in receipts]
