"""Why the agent stopped, beyond the card's own :class:`~openxpki_py.errors.TokenError`.

Each class maps to one exit code in :mod:`openxpki_py.agent.cli`; the
message always says what the user can do next.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import FieldProblem, OpenXPKIError


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


class EnrollmentStopped(AgentError):
    """The run ended before the card was done (timeout, interrupt): run again to continue."""

    code = "agent.stopped"
