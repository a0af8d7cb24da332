"""The failures the token agent and the server share, and the agent's own.

Every error carries a stable ``code`` (shown to users, API clients and in the
server's audit log) and a one-line message that tells the reader what to fix.
The server (``openxpki_py_token.errors``) builds its hierarchy on these base
classes, so a card error and an HSM error are the same :class:`TokenError`
on both sides.  The agent maps its classes to exit codes in one place
(:mod:`openxpki_py_token.cli`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldProblem:
    """One refused input value: which field, the check's stable code, and why."""

    field: str
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": self.message}


class OpenXPKIError(Exception):
    """Base of every error this project raises on purpose.

    Errors travel between layers as data, never as text to be parsed again:
    a refusal of single input values carries them as :class:`FieldProblem`
    rows (``fields``), each with its own stable code; the original
    exception stays reachable as ``__cause__`` (``raise … from exc``).
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, fields: Iterable[FieldProblem] = ()) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.fields: tuple[FieldProblem, ...] = tuple(fields)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigError(OpenXPKIError):
    """The instance configuration is missing, unreadable or invalid.

    The message names the offending key (``ca.key.token_label``) and what was
    expected there.
    """

    code = "config"


class TokenError(OpenXPKIError):
    """A PKCS#11 token (the CA's HSM or a user's card) cannot be used."""

    code = "token"


class TokenModuleError(TokenError):
    """The PKCS#11 module (shared library) is missing or cannot be loaded."""

    code = "token.module"


class TokenNotFound(TokenError):
    """No token with the configured label is present."""

    code = "token.not_found"


class TokenPinError(TokenError):
    """The PIN was refused, is locked or could not be read."""

    code = "token.pin"


class TokenKeyNotFound(TokenError):
    """The token has no key with the configured label / id."""

    code = "token.key_not_found"


class AdminCredentialUnknown(TokenError):
    """The card answers neither to its factory admin credential nor to the one this PKI derives for it.

    It was personalized elsewhere: only an operator's reset (which erases the
    card's keys) makes it usable here.
    """

    code = "card.admin_credential_unknown"


#: Refusals of the whole card, not of one certificate type: reported to the
#: server, which ends the personalization with the reason instead of waiting.
WHOLE_CARD_CODES = frozenset({AdminCredentialUnknown.code})


def unknown_admin_credential(card: str, what: str, reset: str) -> AdminCredentialUnknown:
    """The refusal for a card personalized elsewhere; ``reset`` says how an operator resets it."""
    return AdminCredentialUnknown(
        f"{card} answers neither to its factory {what} nor to the one this PKI derives for it: it was "
        f"personalized elsewhere. Nothing on it was changed; an operator must reset the card {reset} "
        "(this erases its keys and certificates), then run again")


# --- the agent's own -------------------------------------------------------------


class AgentError(OpenXPKIError):
    """Base of the agent's own failures (exit code 1 unless a subclass says otherwise)."""

    code = "agent"


class UsageError(AgentError):
    """The command line cannot work as given (exit code 2)."""

    code = "agent.usage"


class ServerRefused(AgentError):
    """The server answered with an API error, or reported the enrollment failed (exit code 4).

    ``code`` and the message are the server's own, shown to the user verbatim;
    ``fields`` are the input values it refused, each with its own code.
    """

    code = "server.refused"

    def __init__(self, message: str, *, code: str, status: int = 0,
                 retry_after: float | None = None, fields: Iterable[FieldProblem] = ()) -> None:
        super().__init__(message, code=code, fields=fields)
        self.status = status
        self.retry_after = retry_after


class EnrollmentFailed(ServerRefused):
    """The server's task loop ended in ``{"task": "failed"}`` (exit code 4)."""


class ServerUnreachable(AgentError):
    """The server cannot be reached, or its TLS certificate is not trusted (exit code 5)."""

    code = "network"


class ProtocolError(AgentError):
    """The server's answer does not follow the API (wrong URL, proxy page, old server)."""

    code = "protocol"


class ForeignKeyRefused(ProtocolError):
    """A task named a key this personalization did not generate on the card (exit code 1).

    The card is left as it was: the agent writes certificates only for its own keys.
    """

    code = "agent.foreign_key"


class EnrollmentStopped(AgentError):
    """The run ended before the card was done (timeout, interrupt): run again to continue."""

    code = "agent.stopped"
