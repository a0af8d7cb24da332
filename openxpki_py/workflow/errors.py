"""Why a workflow call was refused or failed, one class per reason.

The web layer and the CLI map these to responses and exit codes; ``code``
is stable and shown to users.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError, NotFound, WorkflowError


class DefinitionError(ConfigError):
    """A workflow definition file is invalid.

    The message names the file, the path inside it
    (``states.PENDING.actions[0]``) and the problem.
    """

    code = "workflow.definition"

    def __init__(self, file: str, path: str, problem: str) -> None:
        super().__init__(f"{file}: {path or '(top)'}: {problem}")
        self.file = file
        self.path = path
        self.problem = problem


class UnknownWorkflow(NotFound):
    """No workflow with this id (or no definition of this type) exists."""

    code = "workflow.not_found"


class WorkflowConflict(WorkflowError):
    """Someone else changed the workflow first: reload it and decide again."""

    code = "workflow.conflict"


class ActionNotAvailable(WorkflowError):
    """The action is not offered in the workflow's current state."""

    code = "workflow.action_unavailable"


class AccessDenied(WorkflowError):
    """The caller's role may not run this action or start this workflow."""

    code = "workflow.access_denied"


class InputInvalid(WorkflowError):
    """One or more input fields were refused; ``problems`` maps field → reason."""

    code = "workflow.input"

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        text = "; ".join(f"{k}: {v}" for k, v in self.problems.items())
        super().__init__(f"invalid input: {text}")


class FieldRefused(WorkflowError):
    """Raised by a validator: this one value is not acceptable.

    ``code`` names the check (``csr.key_size``), the message says why.
    """

    code = "workflow.field"


class ActivityFailed(WorkflowError):
    """A manual action's activity failed; nothing it did was kept.

    ``cause_code`` is the ``code`` of the underlying error (e.g. ``token.pin``).
    """

    code = "workflow.activity_failed"

    def __init__(self, message: str, *, cause_code: str) -> None:
        super().__init__(message)
        self.cause_code = cause_code


class SecretInContext(WorkflowError):
    """An activity tried to keep a secret (PIN, code) in the context or history."""

    code = "workflow.secret"
