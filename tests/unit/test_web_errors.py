"""The one table from the project's errors to HTTP answers (web/errors.py), and the JSON API's use of it."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.test import Client

import openxpki_py
from openxpki_py.auth.config import SSOConfig
from openxpki_py.errors import (
    AuthError,
    DirectoryError,
    FieldProblem,
    NotPermitted,
    OpenXPKIError,
    PolicyViolation,
    StorageError,
    TokenError,
    UnexpectedStep,
)
from openxpki_py.personalization.agent_calls import CardMismatch, IssuanceFailed
from openxpki_py.personalization.enrollment import (
    AgentCredential,
    CredentialRefused,
    EnrollmentCodeUsed,
    EnrollmentRateLimited,
    EnrollmentRefused,
    EnrollmentWrongUser,
)
from openxpki_py.web.api import AgentApi
from openxpki_py.web.errors import ERROR_STATUS, RequestInvalid, error_answer, rule_for
from openxpki_py.workflow.errors import (
    AccessDenied,
    ActionNotAvailable,
    ActivityFailed,
    InputInvalid,
    UnknownWorkflow,
    WorkflowConflict,
)

CSR_PROBLEM = FieldProblem("csr", "csr.parse", "expected a PEM certificate request")


@pytest.mark.parametrize(("error", "status", "code"), [
    (AuthError("no"), 403, "auth"),
    (EnrollmentRefused("bad code", code="enroll.code_invalid"), 401, "enroll.code_invalid"),
    (EnrollmentWrongUser("someone else's"), 403, "enroll.wrong_user"),
    (EnrollmentCodeUsed("used"), 409, "enroll.code_used"),
    (EnrollmentRateLimited("wait", retry_after=600), 429, "enroll.rate_limited"),
    (CredentialRefused("expired", code="auth.token_expired"), 401, "auth.token_expired"),
    (NotPermitted("another user's card", code="token.owned_by_other"), 403, "token.owned_by_other"),
    (UnexpectedStep("not now"), 409, "task.unexpected"),
    (CardMismatch("insert that card"), 409, "token.mismatch"),
    (PolicyViolation("too small", code="csr.key_size"), 422, "csr.key_size"),
    (IssuanceFailed("rejected"), 422, "issuance.failed"),
    (InputInvalid([CSR_PROBLEM], code="csr.parse"), 422, "csr.parse"),
    (UnknownWorkflow("workflow 9 does not exist"), 404, "workflow.not_found"),
    (AccessDenied("role"), 403, "workflow.access_denied"),
    (ActionNotAvailable("state"), 409, "workflow.action_unavailable"),
    (WorkflowConflict("reload"), 409, "workflow.conflict"),
    (DirectoryError("LDAP down"), 502, "directory"),
    (TokenError("HSM gone"), 503, "token"),
    (StorageError("disk full"), 503, "storage"),
    (RequestInvalid("not JSON"), 400, "request.invalid"),
    (OpenXPKIError("something refused"), 400, "error"),
])
def test_one_status_per_error_class(error: OpenXPKIError, status: int, code: str) -> None:
    answer = error_answer(error)
    assert (answer.status, answer.code) == (status, code)


def test_server_side_faults_keep_their_words_in_the_log() -> None:
    answer = error_answer(StorageError("ORA-01555: snapshot too old on table WORKFLOW"))
    assert answer.status == 503 and "ORA-" not in answer.message


def test_refusal_headers() -> None:
    assert error_answer(EnrollmentRateLimited("wait", retry_after=600)).headers == {"Retry-After": "600"}
    assert error_answer(CredentialRefused("expired")).headers == {"WWW-Authenticate": "Bearer"}


def _failed(cause: BaseException, code: str, message: str) -> ActivityFailed:
    error = ActivityFailed("Submit the CSR", cause_code=code, cause_message=message)
    error.__cause__ = cause
    return error


def test_an_activity_failure_is_answered_by_its_cause() -> None:
    cause = NotPermitted("card C1 is registered to another user", code="token.owned_by_other")
    answer = error_answer(_failed(cause, cause.code, cause.message))
    assert (answer.status, answer.code, answer.message) == (403, "token.owned_by_other", cause.message)
    hsm = error_answer(_failed(TokenError("PIN locked", code="token.pin"), "token.pin", "PIN locked"))
    assert hsm.status == 503  # the CA's HSM, not the user's card: no longer 403 by a "token." prefix


def test_an_activity_that_crashed_is_a_server_error() -> None:
    answer = error_answer(_failed(RuntimeError("index out of range"), "RuntimeError", "internal error"))
    assert (answer.status, answer.code) == (500, "server.error")
    assert "index" not in answer.message


def _error_classes() -> Iterator[type[OpenXPKIError]]:
    for module in pkgutil.walk_packages(openxpki_py.__path__, "openxpki_py."):
        if module.name.startswith("openxpki_py.web.wsgi"):
            continue
        importlib.import_module(module.name)
    todo = [OpenXPKIError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


def test_no_project_error_is_a_500() -> None:
    """Only exceptions that are not ours are 500s: every OpenXPKIError has a row (its own or a parent's)."""
    for cls in _error_classes():
        assert rule_for(cls.__new__(cls)).status != 500, cls
    assert OpenXPKIError in ERROR_STATUS


def test_the_domain_knows_no_http() -> None:
    assert not hasattr(EnrollmentRefused("x", code="enroll.code_invalid"), "status")
    assert not hasattr(EnrollmentRateLimited("x", retry_after=1), "status")


# --- the JSON API answers through the same table --------------------------------------


class FakeCalls:
    """Stands in for TokenAgentCalls: every call raises what the test put in ``raises``."""

    def __init__(self) -> None:
        self.raises: BaseException | None = None

    def authenticate(self, credential: str, *, sso_login: str | None) -> AgentCredential:
        return AgentCredential(7, "alice", 1, "acid actor adult agent", confirmed=True)

    def _maybe_raise(self) -> None:
        if self.raises is not None:
            raise self.raises

    def task(self, agent: AgentCredential) -> dict[str, Any]:
        self._maybe_raise()
        return {"task": "wait", "reason": "…", "retry_after": 1}

    def submit_csr(self, agent: AgentCredential, **_: Any) -> Any:
        self._maybe_raise()
        raise AssertionError("unreachable in these tests")


@pytest.fixture
def api() -> tuple[Client, FakeCalls]:
    calls = FakeCalls()
    return Client(AgentApi(calls, sso_config=SSOConfig())), calls  # type: ignore[arg-type]


def _call(client: Client, method: str, path: str, body: dict[str, Any] | None = None,
          env: dict[str, str] | None = None) -> Any:
    return client.open(f"/api/v1/{path}", method=method, json=body, headers={"Authorization": "Bearer t"},
                       environ_overrides=env or {})


def test_api_auth_error_is_403(api: tuple[Client, FakeCalls]) -> None:
    client, calls = api
    calls.raises = AuthError("this credential belongs to another user", code="auth.wrong_user")
    r = _call(client, "GET", "task")
    assert (r.status_code, r.json["error"]["code"]) == (403, "auth.wrong_user")  # was 400 inside an action


def test_api_error_outside_an_action_is_mapped_not_500(api: tuple[Client, FakeCalls]) -> None:
    client, calls = api
    calls.raises = UnknownWorkflow("workflow 7 does not exist")
    r = _call(client, "GET", "task")
    assert (r.status_code, r.json["error"]["code"]) == (404, "workflow.not_found")


def test_api_field_problems_are_structured(api: tuple[Client, FakeCalls]) -> None:
    client, calls = api
    calls.raises = InputInvalid([CSR_PROBLEM], code="csr.parse")
    r = _call(client, "POST", "csr", {"csr": "x", "cert_type": "authentication", "key_id": "01"})
    assert r.status_code == 422
    assert r.json["error"]["code"] == "csr.parse"
    assert r.json["error"]["fields"] == [{"field": "csr", "code": "csr.parse",
                                          "message": "expected a PEM certificate request"}]
    assert "[csr.parse]" not in r.json["error"]["message"]


def test_api_refused_sso_login_is_403(api: tuple[Client, FakeCalls]) -> None:
    client, _ = api
    r = _call(client, "GET", "task", env={"REMOTE_USER": "bad\nname"})
    assert (r.status_code, r.json["error"]["code"]) == (403, "auth.login_refused")


def test_api_foreign_exception_is_500_without_its_text(api: tuple[Client, FakeCalls]) -> None:
    client, calls = api
    calls.raises = KeyError("secret-internal-key")
    r = _call(client, "GET", "task")
    assert (r.status_code, r.json["error"]["code"]) == (500, "server.error")
    assert "secret-internal-key" not in r.get_data(as_text=True)


def test_api_missing_credential_is_401_with_challenge(api: tuple[Client, FakeCalls]) -> None:
    client, _ = api
    r = client.get("/api/v1/task")
    assert (r.status_code, r.json["error"]["code"]) == (401, "auth.token_missing")
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert "fields" not in r.json["error"]  # only when there are some
