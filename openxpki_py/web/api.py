"""The JSON API the token agent talks to (``/api/v1``, see docs/api.md).

HTTP only: parse the request (body size, JSON, the bearer credential, the
web server's own login), call :class:`~openxpki_py.personalization.agent_calls.TokenAgentCalls`,
answer JSON.  What the agent may do, and why it is refused, is decided
there; every refusal is one of the project's errors, answered as
``{"error": {"code": …, "message": …, "fields": […]}}`` with the status the
one table in :mod:`.errors` gives it (the same the pages use).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from openxpki_py_token.capabilities import CardCapabilities
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ..auth import identity as sso
from ..errors import AuthError, NotFound, OpenXPKIError
from ..personalization.agent_calls import AgentAnswer, TokenAgentCalls
from ..personalization.enrollment import AgentCredential, CredentialRefused
from ..unblock.agent_calls import PinUnblockCalls
from .client_address import TrustedProxies
from .errors import ErrorAnswer, RequestInvalid, RequestTooLarge, database_answer, error_answer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, indent=None, separators=(",", ":")), status=status,
                        mimetype="application/json", headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def with_next_task(body: dict[str, Any], answer: AgentAnswer) -> dict[str, Any]:
    """The answer's body with the agent's next task (``next_task``, docs/api.md), when the call knows it.

    An agent that does not know the key ignores it and asks ``GET /task``, as before.
    """
    if answer.next_task is not None:
        body["next_task"] = answer.next_task
    return body


def json_error(exc: OpenXPKIError) -> Response:
    return json_answer(error_answer(exc))


def json_answer(answer: ErrorAnswer) -> Response:
    return json_response(answer.as_json(), answer.status, answer.headers or None)


def _check_text(body: Any) -> None:
    """Refuse strings no database column can hold: NUL, and lone UTF-16 surrogates (``"\\ud800"``).

    JSON allows both; stored, they fail in the driver (PostgreSQL refuses NUL,
    UTF-8 encoding refuses surrogates) long after the request was read.
    """
    pending = [body]
    while pending:  # iterative: nesting depth is whatever json.loads accepted
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise RequestInvalid("text in the request must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestInvalid("text in the request must be valid Unicode (no lone surrogates)") from None


def _text(body: dict[str, Any], *names: str, missing: str) -> tuple[str, ...]:
    """The named non-empty strings of the body, or RequestInvalid saying what to send."""
    values = tuple(body.get(name) for name in names)
    if not all(isinstance(v, str) and v for v in values):
        raise RequestInvalid(missing)
    return values  # type: ignore[return-value]  # all checked to be str above


def _token_serial(body: dict[str, Any]) -> str | None:
    """The card the agent works on (``token_serial``), when it names one."""
    named = body.get("token_serial")
    if named is not None and not isinstance(named, str):
        raise RequestInvalid("token_serial must be the card's serial number as text")
    return named


def _attestation(body: dict[str, Any]) -> dict[str, str] | None:
    """The card's key attestation (``attestation``: an object of text), when the agent sends one."""
    sent = body.get("attestation")
    if sent is None:
        return None
    if not isinstance(sent, dict) or not all(isinstance(v, str) for v in sent.values()):
        raise RequestInvalid("attestation must be an object of text: format, key_certificate, device_certificate")
    return sent


class AgentApi:
    """``/api/v1``: a WSGI callable the web app hands API paths to."""

    def __init__(self, calls: TokenAgentCalls, *, sso_config: Any,
                 trusted_proxies: TrustedProxies | None = None, unblock: PinUnblockCalls | None = None) -> None:
        self.calls = calls
        self.unblock = unblock  # the pin_unblock workflow's agent calls; None: no such endpoints
        self.sso_config = sso_config
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.routes: dict[str, Callable[[Request], Response]] = {
            "enroll": self.enroll, "token": self.report_token, "task": self.task,
            "csr": self.submit_csr, "receipt": self.receipt, "unable": self.card_unable,
            "card-credentials": self.card_credentials,
            "escrowed_key": self.escrowed_key,
            "unblock-card": self.unblock_card, "unblock-credential": self.unblock_credential,
            "unblock-result": self.unblock_result,
        }
        self.url_map = Map([
            Rule("/api/v1/enroll", endpoint="enroll", methods=["POST"]),
            Rule("/api/v1/token", endpoint="token", methods=["POST"]),
            Rule("/api/v1/task", endpoint="task", methods=["GET"]),
            Rule("/api/v1/csr", endpoint="csr", methods=["POST"]),
            Rule("/api/v1/receipt", endpoint="receipt", methods=["POST"]),
            Rule("/api/v1/unable", endpoint="unable", methods=["POST"]),
            Rule("/api/v1/card-credentials", endpoint="card-credentials", methods=["POST"]),
            Rule("/api/v1/escrowed-key", endpoint="escrowed_key", methods=["POST"]),
            Rule("/api/v1/pin-unblock/card", endpoint="unblock-card", methods=["POST"]),
            Rule("/api/v1/pin-unblock/credential", endpoint="unblock-credential", methods=["POST"]),
            Rule("/api/v1/pin-unblock/result", endpoint="unblock-result", methods=["POST"]),
        ])

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, _ = self.url_map.bind_to_environ(environ).match()
            response = self.routes[endpoint](request)
        except OpenXPKIError as exc:  # every refusal, by the one table in web/errors.py
            log.info("API %s %s: %s: %s", request.method, request.path, exc.code, exc.message)
            response = json_error(exc)
        except HTTPException as exc:
            code = {404: "api.not_found", 405: "api.method_not_allowed"}.get(exc.code or 400, "api.bad_request")
            response = json_response({"error": {"code": code, "message": exc.description or exc.name}},
                                     exc.code or 400)
        except SQLAlchemyError as exc:
            # Database unreachable, lost or busy (rolled back): 503, the agent waits and asks again.
            log.warning("API %s %s: database failed: %s", request.method, request.path, exc, exc_info=True)
            response = json_answer(database_answer(exc))
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            response = json_response({"error": {"code": "server.error",
                                                "message": "the server failed; the details are in its log"}}, 500)
        return response(environ, start_response)

    # --- reading the request --------------------------------------------------------

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise RequestTooLarge(f"request bodies are limited to {MAX_BODY} bytes")
        raw = request.stream.read(MAX_BODY + 1)  # never more, whatever Content-Length says
        if len(raw) > MAX_BODY:
            raise RequestTooLarge(f"request bodies are limited to {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise RequestInvalid("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise RequestInvalid("the request body must be a JSON object")
        _check_text(body)
        return body

    def _sso_login(self, request: Request) -> str | None:
        try:
            peer = str(request.environ.get("REMOTE_ADDR") or "")
            return sso.identity_from_environ(request.environ, self.sso_config,
                                             from_trusted_proxy=self.trusted_proxies.trusts(peer)).login
        except sso.NotAuthenticated:
            return None
        except sso.InvalidLogin as exc:
            raise AuthError("the web server's login name was refused", code="auth.login_refused") from exc

    def _agent(self, request: Request) -> AgentCredential:
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise CredentialRefused("send the agent's credential: Authorization: Bearer …",
                                    code="auth.token_missing")
        return self.calls.authenticate(credential.strip(), sso_login=self._sso_login(request))

    # --- endpoints ----------------------------------------------------------------

    def enroll(self, request: Request) -> Response:
        body = self._body(request)
        code, agent_key = body.get("code"), body.get("agent_key")
        if not isinstance(code, str) or not code.strip() or len(code) > 64:
            raise RequestInvalid("send the enrollment code shown on the web page: {\"code\": …}")
        grant = self.calls.redeem(code, agent_key=agent_key if isinstance(agent_key, str) else "",
                                  client=self.trusted_proxies.client(request), sso_login=self._sso_login(request))
        return json_response({
            "access_token": grant.access_token, "token_type": "Bearer",
            "expires_in": int((grant.expires_at - datetime.now(timezone.utc)).total_seconds()),
            "workflow_id": grant.workflow_id, "user": grant.login,
            "pairing_nonce": grant.nonce, "pairing_phrase": grant.phrase,
        })

    def report_token(self, request: Request) -> Response:
        agent = self._agent(request)
        body = self._body(request)
        (serial,) = _text(body, "serial", missing="the card's serial number is missing")
        try:
            capabilities = CardCapabilities.from_report(body)
        except ValueError as exc:
            raise RequestInvalid(f"the card report's profile or key slots: {exc}") from None
        answer = self.calls.report_token(agent, serial, body, capabilities)
        return json_response(with_next_task({"status": answer.status}, answer))

    def task(self, request: Request) -> Response:
        return json_response(self.calls.task(self._agent(request)))

    def submit_csr(self, request: Request) -> Response:
        agent = self._agent(request)
        body = self._body(request)
        csr_pem, cert_type, key_id = _text(body, "csr", "cert_type", "key_id",
                                           missing="send cert_type, key_id and csr (PEM)")
        answer = self.calls.submit_csr(agent, cert_type=cert_type, key_id=key_id, csr_pem=csr_pem,
                                       token_serial=_token_serial(body), attestation=_attestation(body))
        if answer.status == "issued":
            return json_response(with_next_task({"status": "issued", "serial": answer.serial}, answer))
        return json_response(with_next_task({"status": "pending", "reason": answer.reason}, answer), 202)

    def card_unable(self, request: Request) -> Response:
        agent = self._agent(request)
        body = self._body(request)
        cert_type, code = _text(body, "cert_type", "code", missing="send cert_type and code (and a reason)")
        reason = body.get("reason")
        self.calls.card_unable(agent, cert_type=cert_type, code=code,
                               reason=reason if isinstance(reason, str) else "",
                               token_serial=_token_serial(body))
        return json_response({"status": "recorded"})

    def card_credentials(self, request: Request) -> Response:
        """The confirmed card's admin credentials (docs/api.md); never logged, never cached."""
        agent = self._agent(request)
        body = self._body(request)
        (serial,) = _text(body, "token_serial", missing="send token_serial, the card's serial number")
        credentials = self.calls.card_credentials(agent, token_serial=serial)
        return json_response({"card_type": credentials.card_type, "serial": credentials.serial,
                              "credentials": credentials.as_api()})

    def receipt(self, request: Request) -> Response:
        agent = self._agent(request)
        body = self._body(request)
        cert_type, serial = _text(body, "cert_type", "serial",
                                  missing="send cert_type and serial of the installed certificate")
        proof = body.get("key_proof")
        if proof is not None and not isinstance(proof, str):
            raise RequestInvalid("key_proof must be base64url text")
        answer = self.calls.receipt(agent, cert_type=cert_type, serial=serial, token_serial=_token_serial(body),
                                    key_proof=proof)
        return json_response(with_next_task({"status": answer.status}, answer))

    def escrowed_key(self, request: Request) -> Response:
        """An escrowed key for the card, sealed for the agent's ephemeral key (docs/api.md)."""
        agent = self._agent(request)
        body = self._body(request)
        cert_type, agent_key = _text(body, "cert_type", "agent_key",
                                     missing="send cert_type and agent_key (ephemeral X25519, base64url)")
        rsa_proof = body.get("rsa_proof", "rsa-oaep")
        if not isinstance(rsa_proof, str):
            raise RequestInvalid("rsa_proof must be text: rsa-oaep or rsa-pkcs1v15")
        return json_response(self.calls.escrowed_key(agent, cert_type=cert_type, agent_key=agent_key,
                                                     token_serial=_token_serial(body), rsa_proof=rsa_proof))

    # --- PIN unblock (the pin_unblock workflow, docs/api.md) -----------------------------

    def _unblock(self) -> PinUnblockCalls:
        if self.unblock is None:
            raise NotFound("this server has no PIN unblock", code="api.not_found")
        return self.unblock

    def unblock_card(self, request: Request) -> Response:
        calls, agent, body = self._unblock(), self._agent(request), self._body(request)
        (serial,) = _text(body, "serial", missing="the card's serial number is missing")
        profile = body.get("card_profile")
        return json_response({"status": calls.report_card(agent, serial, profile if isinstance(profile, str) else "")})

    def unblock_credential(self, request: Request) -> Response:
        """The card's unblock credential (once); never logged, never cached."""
        calls, agent, body = self._unblock(), self._agent(request), self._body(request)
        (serial,) = _text(body, "token_serial", missing="send token_serial, the card's serial number")
        credentials = calls.credential(agent, token_serial=serial)
        return json_response({"card_type": credentials.card_type, "serial": credentials.serial,
                              "credentials": credentials.as_api()})

    def unblock_result(self, request: Request) -> Response:
        calls, agent, body = self._unblock(), self._agent(request), self._body(request)
        serial, outcome = _text(body, "token_serial", "outcome", missing="send token_serial and outcome")
        code = body.get("code")
        if outcome not in ("unblocked", "failed") or (code is not None and not isinstance(code, str)):
            raise RequestInvalid("outcome is 'unblocked' or 'failed'; code, if sent, is text")
        return json_response({"state": calls.result(agent, token_serial=serial, outcome=outcome, code=code)})
