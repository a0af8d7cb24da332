"""HTTP errors as exceptions: views raise them, :mod:`.app` renders them once.

They are Werkzeug's exception classes with this application's wording.
``description`` is shown to the user, so it never contains what a handler
script printed, a stack trace or a database message.
"""

from __future__ import annotations

from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, InternalServerError, NotFound, Unauthorized

from ..errors import AuthError, OpenXPKIError, WorkflowError
from ..errors import NotFound as RecordNotFound


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
    description = "Your sign-on name cannot be used with this application. Contact your administrator."


class PageNotFound(NotFound):
    description = "There is no such page, or it is not yours to see."


class Conflict(HTTPException):
    code = 409
    description = "The request could not be carried out in the current state."


class ServerError(InternalServerError):
    description = "Something went wrong on the server. It has been logged; please try again later."


def http_error_for(exc: OpenXPKIError) -> HTTPException:
    """Map the project's own errors to what the user sees (one place, see DESIGN §5)."""
    if isinstance(exc, AuthError):
        return LoginRefused()
    if isinstance(exc, RecordNotFound):
        return PageNotFound()
    if isinstance(exc, WorkflowError):
        return Conflict(f"The workflow refused this step ({exc.code}).")
    return ServerError()


__all__ = [
    "BadRequest", "CSRFRejected", "Conflict", "HTTPException", "LoginRefused", "NotAuthenticated",
    "PageNotFound", "RoleNotGranted", "RoleRequired", "ServerError", "http_error_for",
]
