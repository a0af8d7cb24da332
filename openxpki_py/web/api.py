"""The JSON API the token agent talks to (``/api/v1``, see docs/api.md).

The agent is not a browser: it has no SSO session and no cookies.  It
trades the one-time enrollment code shown on the user's page for a bearer
credential bound to that one workflow, and then acts *as the workflow's
user* through the workflow's manual actions.  If the web server did
authenticate the caller (a site may put /api under SSO), that identity must
be the workflow's user.

Every error is ``{"error": {"code": …, "message": …}}`` with a fitting
status.  Calls an interrupted agent repeats (token, CSR, receipt) answer
the same way twice and never act twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from cryptography import x509
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from ..auth import identity as sso
from ..crypto.csr import public_key_fingerprint
from ..errors import OpenXPKIError
from ..personalization.enrollment import EnrollmentRefused, check_credential, redeem_code
from ..personalization.tasks import WF_TYPE, agent_task
from ..workflow.errors import ActionNotAvailable, ActivityFailed, InputInvalid, WorkflowConflict

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

AGENT_ROLE = "User"
MAX_BODY = 64 * 1024

# Refusal codes from activities → HTTP status.
STATUS_BY_PREFIX = (("token.", 403), ("csr.", 422), ("profile.", 422), ("task.", 409), ("issuance.", 422),
                    ("directory.", 502), ("field.", 422))


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, indent=None, separators=(",", ":")), status=status,
                        mimetype="application/json", headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


class AgentApi:
    """``/api/v1``: a WSGI callable the web app hands API paths to."""

    def __init__(self, *, db: Any, workflows: Any, policy: Any, sso_config: Any) -> None:
        self.db = db
        self.workflows = workflows
        self.policy = policy
        self.sso_config = sso_config
        self.routes: dict[str, Callable[[Request, Any], Response]] = {
            "enroll": self.enroll, "token": self.report_token, "task": self.task,
            "csr": self.submit_csr, "receipt": self.receipt,
        }
        self.url_map = Map([
            Rule("/api/v1/enroll", endpoint="enroll", methods=["POST"]),
            Rule("/api/v1/token", endpoint="token", methods=["POST"]),
            Rule("/api/v1/task", endpoint="task", methods=["GET"]),
            Rule("/api/v1/csr", endpoint="csr", methods=["POST"]),
            Rule("/api/v1/receipt", endpoint="receipt", methods=["POST"]),
        ])

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, _ = self.url_map.bind_to_environ(environ).match()
            response = self.routes[endpoint](request, None)
        except ApiError as exc:
            response = json_response({"error": {"code": exc.code, "message": exc.message}}, exc.status, exc.headers)
        except HTTPException as exc:
            code = {404: "api.not_found", 405: "api.method_not_allowed"}.get(exc.code or 400, "api.bad_request")
            response = json_response({"error": {"code": code, "message": exc.description or exc.name}},
                                     exc.code or 400)
        except OperationalError:
            # Database unreachable or busy: the agent waits and asks again.
            log.warning("API %s %s: database unavailable", request.method, request.path, exc_info=True)
            response = json_response({"error": {"code": "server.unavailable",
                                                "message": "the server cannot reach its database; retrying helps"}},
                                     503, {"Retry-After": "5"})
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            response = json_response({"error": {"code": "server.error",
                                                "message": "the server failed; the details are in its log"}}, 500)
        return response(environ, start_response)

    # --- plumbing ---------------------------------------------------------------

    @staticmethod
    def _now() -> datetime:
        return datetime.now(timezone.utc)

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise ApiError(413, "request.too_large", f"request bodies are limited to {MAX_BODY} bytes")
        raw = request.stream.read(MAX_BODY + 1)  # never more, whatever Content-Length says
        if len(raw) > MAX_BODY:
            raise ApiError(413, "request.too_large", f"request bodies are limited to {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):
            raise ApiError(400, "request.invalid", "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request.invalid", "the request body must be a JSON object")
        return body

    def _sso_login(self, request: Request) -> str | None:
        try:
            return sso.identity_from_environ(request.environ, self.sso_config).login
        except sso.NotAuthenticated:
            return None
        except sso.InvalidLogin:
            raise ApiError(403, "auth.login_refused", "the web server's login name was refused") from None

    def _agent(self, request: Request) -> tuple[int, str]:
        header = request.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise ApiError(401, "auth.token_missing", "send the agent's credential: Authorization: Bearer …",
                           {"WWW-Authenticate": "Bearer"})
        try:
            with self.db.connect() as conn:
                workflow_id, login = check_credential(conn, credential.strip(), now=self._now())
        except EnrollmentRefused as exc:
            raise ApiError(exc.status, exc.code, exc.message, {"WWW-Authenticate": "Bearer"}) from None
        sso_login = self._sso_login(request)
        if sso_login is not None and sso_login != login:
            raise ApiError(403, "auth.wrong_user", "this credential belongs to another user")
        return workflow_id, login

    def _view(self, workflow_id: int, body: dict[str, Any] | None = None) -> Any:
        view = self.workflows.get(workflow_id)
        if view.wf_type != WF_TYPE:
            raise ApiError(409, "workflow.type", "this credential is not for a smartcard personalization")
        # Keys and certificates must go to the confirmed card: an agent that
        # names another card (swapped mid-way) is stopped before it acts.
        card = view.context.get("token") or {}
        named = (body or {}).get("token_serial")
        if named is not None and card.get("confirmed") and named != card.get("serial"):
            raise ApiError(409, "token.mismatch",
                           f"this personalization is for card {card['serial']}; insert that card")
        return view

    def _execute(self, workflow_id: int, login: str, action: str, inputs: dict[str, Any]) -> Any:
        try:
            return self.workflows.execute(workflow_id, action, actor=login, role=AGENT_ROLE, inputs=inputs)
        except InputInvalid as exc:
            problems = "; ".join(f"{k}: {v}" for k, v in sorted(exc.problems.items()))
            code = next((p.rsplit("[", 1)[1].rstrip("]") for p in exc.problems.values() if p.endswith("]")),
                        "input.invalid")
            raise ApiError(422, code, f"the request was refused: {problems}") from None
        except ActivityFailed as exc:
            status = next((s for prefix, s in STATUS_BY_PREFIX if exc.cause_code.startswith(prefix)), 400)
            raise ApiError(status, exc.cause_code, _cause(exc.message)) from None
        except ActionNotAvailable as exc:
            raise ApiError(409, "task.unexpected", exc.message) from None
        except WorkflowConflict as exc:
            raise ApiError(409, "workflow.conflict", exc.message) from None
        except OpenXPKIError as exc:
            raise ApiError(400, exc.code, exc.message) from None

    # --- endpoints ----------------------------------------------------------------

    def enroll(self, request: Request, _: Any) -> Response:
        code = self._body(request).get("code")
        if not isinstance(code, str) or not code.strip() or len(code) > 64:
            raise ApiError(400, "request.invalid", "send the enrollment code shown on the web page: {\"code\": …}")
        refusal: EnrollmentRefused | None = None
        with self.db.begin() as conn:
            try:
                grant = redeem_code(conn, code, client=request.remote_addr or "unknown",
                                    limits=self.policy.enrollment, now=self._now(),
                                    sso_login=self._sso_login(request))
            except EnrollmentRefused as exc:
                refusal = exc  # commit: the failure counts towards the rate limit
        if refusal is not None:
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
            raise ApiError(refusal.status, refusal.code, refusal.message, headers)
        return json_response({
            "access_token": grant.access_token, "token_type": "Bearer",
            "expires_in": int((grant.expires_at - self._now()).total_seconds()),
            "workflow_id": grant.workflow_id, "user": grant.login,
        })

    def report_token(self, request: Request, _: Any) -> Response:
        workflow_id, login = self._agent(request)
        body = self._body(request)
        serial = body.get("serial")
        if not isinstance(serial, str) or not serial:
            raise ApiError(400, "request.invalid", "the card's serial number is missing")
        view = self._view(workflow_id)
        token = view.context.get("token")
        if token is not None and token["serial"] == serial:
            return json_response({"status": "confirmed" if token["confirmed"] else "awaiting_confirmation"})
        if token is not None and token.get("confirmed"):
            raise ApiError(409, "token.mismatch",
                           f"this personalization is for card {token['serial']}; insert that card")
        if view.state not in ("WAIT_FOR_TOKEN", "CONFIRM_TOKEN"):
            raise ApiError(409, "task.unexpected", f"the personalization is past the card step ({view.state})")
        inputs = {"serial": serial}
        for field_name, key in (("model", "model"), ("manufacturer", "manufacturer"), ("token_label", "label"),
                                ("card_profile", "card_profile")):
            if isinstance(body.get(key), str) and body[key]:
                inputs[field_name] = body[key].strip()
        self._execute(workflow_id, login, "report_token", inputs)
        return json_response({"status": "awaiting_confirmation"})

    def task(self, request: Request, _: Any) -> Response:
        workflow_id, _login = self._agent(request)
        view = self._view(workflow_id)
        children = self.workflows.children(workflow_id) if view.state == "ISSUING" else ()
        return json_response(agent_task(view, children))

    def submit_csr(self, request: Request, _: Any) -> Response:
        workflow_id, login = self._agent(request)
        body = self._body(request)
        csr_pem, cert_type, key_id = body.get("csr"), body.get("cert_type"), body.get("key_id")
        if not (isinstance(csr_pem, str) and isinstance(cert_type, str) and isinstance(key_id, str)
                and csr_pem and cert_type and key_id):
            raise ApiError(400, "request.invalid", "send cert_type, key_id and csr (PEM)")
        view = self._view(workflow_id, body)
        earlier = self._same_csr(view, cert_type, csr_pem)
        if earlier is None:
            view = self._execute(workflow_id, login, "submit_csr",
                                 {"cert_type": cert_type, "key_id": key_id, "csr": csr_pem})
            earlier = self._same_csr(view, cert_type, csr_pem)
        if earlier is None:  # the CSR was accepted but the workflow moved on without it: failed
            raise ApiError(422, "issuance.failed", agent_task(view)["message"])
        return self._csr_answer(view, earlier)

    def _csr_answer(self, view: Any, entry: dict[str, Any]) -> Response:
        if entry["status"] in ("issued", "installed"):
            return json_response({"status": "issued", "serial": entry["serial"]})
        if entry["status"] == "failed":
            raise ApiError(422, "issuance.failed", entry.get("reason", "the certificate was not issued"))
        task = agent_task(view, self.workflows.children(view.id))
        return json_response({"status": "pending", "reason": task.get("reason", "issuing")}, 202)

    @staticmethod
    def _same_csr(view: Any, cert_type: str, csr_pem: str) -> dict[str, Any] | None:
        """The entry this very request was already accepted for (a repeated post), if any.

        The same key posted for another certificate type is not a repeat:
        the workflow refuses it (``csr.key_reused``).
        """
        try:
            fingerprint = public_key_fingerprint(x509.load_pem_x509_csr(csr_pem.encode("ascii")).public_key())
        except (ValueError, UnicodeEncodeError):
            return None  # the workflow's csr_syntax validator explains what is wrong
        entries = view.context.get("certificates") or []
        return next((e for e in entries if e.get("csr_sha256") == fingerprint and e["type"] == cert_type), None)

    def receipt(self, request: Request, _: Any) -> Response:
        workflow_id, login = self._agent(request)
        body = self._body(request)
        cert_type, serial = body.get("cert_type"), body.get("serial")
        if not isinstance(cert_type, str) or not isinstance(serial, str) or not cert_type or not serial:
            raise ApiError(400, "request.invalid", "send cert_type and serial of the installed certificate")
        view = self._view(workflow_id, body)
        for entry in view.context.get("certificates") or []:
            if entry.get("serial") == serial.lower() and entry["status"] == "installed":
                return json_response({"status": "installed"})
        self._execute(workflow_id, login, "confirm_install", {"cert_type": cert_type, "certificate_serial": serial})
        return json_response({"status": "installed"})


def _cause(message: str) -> str:
    """The activity's own words, without the engine's "X failed, nothing was changed: code:" prefix."""
    head, sep, tail = message.partition(": ")
    if sep and "nothing was changed" in head:
        _code, sep2, text = tail.partition(": ")
        return text if sep2 else tail
    return message
