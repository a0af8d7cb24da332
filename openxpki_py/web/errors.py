"""HTTP errors: the one table from the project's errors to statuses, and the page-only exceptions.

:data:`ERROR_STATUS` is the only place that knows which HTTP status an
:class:`~openxpki_py.errors.OpenXPKIError` earns; the HTML pages
(:mod:`.app`) and the JSON API (:mod:`.api`) both answer through
:func:`error_answer`, so one error gets one status and one code everywhere.
Classes are looked up along the error's MRO, so a subclass not listed
inherits its parent's row.

The Werkzeug exceptions below are for what only the web layer knows (no
SSO login, a bad CSRF token, a role not chosen).  ``description`` is shown
to the user, so it never contains what a handler script printed, a stack
trace or a database message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, InternalServerError, NotFound, Unauthorized

from ..db.engine import DatabaseUnavailable, storage_error
from ..errors import (
    AuthError,
    CAError,
    ConfigError,
    DirectoryError,
    FieldProblem,
    NotPermitted,
    OpenXPKIError,
    PolicyViolation,
    StorageError,
    TokenError,
    UnexpectedStep,
    WorkflowError,
)
from ..errors import NotFound as RecordNotFound
from ..personalization.enrollment import (
    CredentialRefused,
    EnrollmentCodeUsed,
    EnrollmentRateLimited,
    EnrollmentRefused,
    EnrollmentWrongUser,
)
from ..workflow.errors import (
    AccessDenied,
    ActionNotAvailable,
    ActivityFailed,
    FieldRefused,
    InputInvalid,
    WorkflowConflict,
)

NOT_FOUND_TEXT = "There is no such page, or it is not yours to see."
SERVER_ERROR_TEXT = "Something went wrong on the server. It has been logged; please try again later."
UNAVAILABLE_TEXT = "A service the server needs is not available right now. Please try again later."
LOGIN_REFUSED_TEXT = "Your sign-on name cannot be used with this application. Contact your administrator."
PERSON_UNKNOWN_TEXT = ("Your sign-on name does not match exactly one person in the company directory, "
                       "spelled as the directory spells it. Contact your administrator.")
REALM_TEXT = "Your sign-on realm (the part after @) is not accepted by this application. Contact your administrator."


class RequestInvalid(OpenXPKIError):
    """The request itself is malformed (not JSON, a required value missing): the client must change it."""

    code = "request.invalid"


class RequestTooLarge(RequestInvalid):
    """The request body is larger than the API accepts."""

    code = "request.too_large"


@dataclass(frozen=True)
class ErrorRule:
    """How one class of error is answered.

    ``public``: the error's own message is worded for users (else a generic
    sentence is shown and the message stays in the log).  ``page_text``:
    what an HTML page says instead of the message (e.g. "not found" must not
    confirm that someone else's record exists).  ``code``: the code clients
    see instead of the error's own (a documented API contract).
    ``retry_after``: seconds for ``Retry-After``, when asking again soon may
    succeed.
    """

    status: int
    public: bool = True
    page_text: str | None = None
    code: str | None = None
    retry_after: int | None = None


# How long a client waits before it asks again after a 503 for the database.
RETRY_AFTER_SECONDS = 5


# Most specific first only for the reader: lookup follows the error's MRO.
ERROR_STATUS: dict[type[OpenXPKIError], ErrorRule] = {
    # the agent's enrollment code and credential
    EnrollmentRateLimited: ErrorRule(429),
    EnrollmentCodeUsed: ErrorRule(409),
    EnrollmentWrongUser: ErrorRule(403),
    CredentialRefused: ErrorRule(401),
    EnrollmentRefused: ErrorRule(401),
    AuthError: ErrorRule(403, page_text=LOGIN_REFUSED_TEXT),
    # requests the policy or the workflow refuses
    RequestTooLarge: ErrorRule(413),
    RequestInvalid: ErrorRule(400),
    NotPermitted: ErrorRule(403),
    UnexpectedStep: ErrorRule(409),
    InputInvalid: ErrorRule(422),
    FieldRefused: ErrorRule(422),
    PolicyViolation: ErrorRule(422),
    RecordNotFound: ErrorRule(404, page_text=NOT_FOUND_TEXT),
    AccessDenied: ErrorRule(403),
    WorkflowConflict: ErrorRule(409),
    ActionNotAvailable: ErrorRule(409),
    WorkflowError: ErrorRule(409),
    # services behind the application
    DirectoryError: ErrorRule(502),
    TokenError: ErrorRule(503, public=False),
    CAError: ErrorRule(503, public=False),
    # a lost database: nothing of the request happened (rolled back), ask again
    DatabaseUnavailable: ErrorRule(503, public=False, code="server.unavailable", retry_after=RETRY_AFTER_SECONDS),
    StorageError: ErrorRule(503, public=False, retry_after=RETRY_AFTER_SECONDS),
    ConfigError: ErrorRule(503, public=False),
    # a refusal of a kind not listed above
    OpenXPKIError: ErrorRule(400),
}

# An activity that failed for a reason that is not ours (a bug, a library's
# exception): the server's fault, answered like any unexpected exception.
_INTERNAL = ErrorRule(500, public=False, page_text=SERVER_ERROR_TEXT)


def rule_for(exc: OpenXPKIError) -> ErrorRule:
    for cls in type(exc).__mro__:
        rule = ERROR_STATUS.get(cls)
        if rule is not None:
            return rule
    raise AssertionError("OpenXPKIError is in the table")


@dataclass(frozen=True)
class ErrorAnswer:
    """What the client is told: status, stable code, a sentence, field problems, extra headers."""

    status: int
    code: str
    message: str
    fields: tuple[FieldProblem, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    page_text: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            body["fields"] = [p.as_json() for p in self.fields]
        return {"error": body}


def error_answer(exc: OpenXPKIError) -> ErrorAnswer:
    """The answer for one of the project's errors, by :data:`ERROR_STATUS`."""
    code, message, fields = exc.code, exc.message, exc.fields
    cause: BaseException | None = exc
    if isinstance(exc, ActivityFailed):
        # The workflow only recorded the failure: the cause decides the answer.
        cause = exc.__cause__
        code, message = exc.cause_code, exc.cause_message
    if not isinstance(cause, OpenXPKIError):
        return ErrorAnswer(500, "server.error", "the server failed; the details are in its log",
                           page_text=_INTERNAL.page_text)
    rule = rule_for(cause)
    fields = fields or cause.fields
    code = rule.code or code
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = str(rule.retry_after)
    if isinstance(cause, CredentialRefused):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(cause, EnrollmentRateLimited):
        headers["Retry-After"] = str(cause.retry_after)
    if not rule.public:
        message = UNAVAILABLE_TEXT if rule.status == 503 else SERVER_ERROR_TEXT
    return ErrorAnswer(rule.status, code, message, fields, headers, rule.page_text)


def database_answer(exc: SQLAlchemyError) -> ErrorAnswer:
    """The answer for a failure SQLAlchemy raised (lost or locked database: 503), by the same table."""
    return error_answer(storage_error(exc))


class MappedError(HTTPException):
    """An :class:`ErrorAnswer` as a Werkzeug exception, for the HTML error page."""

    def __init__(self, answer: ErrorAnswer) -> None:
        super().__init__(answer.page_text or answer.message)
        self.code = answer.status
        self.answer = answer

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), *self.answer.headers.items()]


def http_error_for(exc: OpenXPKIError) -> HTTPException:
    """The page-side answer for one of the project's errors (see :data:`ERROR_STATUS`)."""
    return MappedError(error_answer(exc))


class NotAuthenticated(Unauthorized):
    description = (
        "The web server did not authenticate you, so this application does not know who you are. "
        "If you expected to be signed in automatically, the single sign-on in front of this "
        "application is not configured for this address: please tell your administrator."
    )


class CSRFRejected(Forbidden):
    description = (
        "This form was not accepted because its security token is missing or out of date. "
        "Go back, reload the page and try again."
    )


class RoleNotGranted(Forbidden):
    def __init__(self, role: str) -> None:
        super().__init__(f"The role {role!r} was not granted to you. "
                         "If you believe you should have it, contact your administrator.")


class RoleRequired(Forbidden):
    description = "Your current role may not open this page."


class LoginRefused(Forbidden):
    description = LOGIN_REFUSED_TEXT


class PersonUnknown(Forbidden):
    description = PERSON_UNKNOWN_TEXT


class RealmNotAccepted(Forbidden):
    description = REALM_TEXT


class PageNotFound(NotFound):
    description = NOT_FOUND_TEXT


class Conflict(HTTPException):
    code = 409
    description = "The request could not be carried out in the current state."


class ServerError(InternalServerError):
    description = SERVER_ERROR_TEXT


__all__ = [
    "ERROR_STATUS", "BadRequest", "CSRFRejected", "Conflict", "ErrorAnswer", "ErrorRule", "HTTPException",
    "LoginRefused", "MappedError", "NotAuthenticated", "PageNotFound", "RequestInvalid", "RequestTooLarge",
    "RoleNotGranted", "RoleRequired", "ServerError", "database_answer", "error_answer", "http_error_for",
    "rule_for",
]
