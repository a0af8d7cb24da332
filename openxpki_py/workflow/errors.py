"""Why a workflow call was refused or failed, one class per reason.

The web layer and the CLI map these to responses and exit codes; ``code``
is stable and shown to users.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ConfigError, FieldProblem, NotFound, WorkflowError


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
    """One or more input fields were refused; ``fields`` says which, with a code and reason each.

    ``code`` is the first validator's verdict when a validator refused (it
    names the refusal best, e.g. ``csr.parse``), else ``input.invalid``.
    """

    code = "input.invalid"

    def __init__(self, problems: Iterable[FieldProblem], *, code: str | None = None) -> None:
        fields = tuple(problems)
        text = "; ".join(f"{p.field}: {p.message}" for p in fields)
        super().__init__(f"invalid input: {text}", code=code, fields=fields)

    @property
    def problems(self) -> dict[str, str]:
        """Field → reason, for a form that shows each next to its field."""
        return {p.field: p.message for p in self.fields}


class FieldRefused(WorkflowError):
    """Raised by a validator: this one value is not acceptable.

    ``code`` names the check (``csr.key_size``), the message says why.
    """

    code = "workflow.field"


class ActivityFailed(WorkflowError):
    """A manual action's activity failed; nothing it did was kept.

    ``cause_code`` and ``cause_message`` are the underlying error's own code
    and words (secrets redacted; a foreign exception's text replaced), for a
    caller that shows them without the action's name; the error itself is
    ``__cause__``.
    """

    code = "workflow.activity_failed"

    def __init__(self, action_label: str, *, cause_code: str, cause_message: str) -> None:
        super().__init__(f"{action_label} failed, nothing was changed: {cause_code}: {cause_message}")
        self.action_label = action_label
        self.cause_code = cause_code
        self.cause_message = cause_message


class SecretInContext(WorkflowError):
    """An activity tried to keep a secret (PIN, code) in the context or history."""

    code = "workflow.secret"
