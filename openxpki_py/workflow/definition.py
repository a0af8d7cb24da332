"""The checked, immutable model of a workflow definition.

A definition file (``defs/<type>.yaml``) is parsed and checked by
:mod:`.loader`; the engine only ever sees these objects.  Words as in the
YAML:

- a **state** is *manual* (offers ``actions`` to users), *automatic*
  (``auto``: runs one action on entry), *waiting* (``wait: children``:
  pauses until every child workflow is final, then runs ``auto``) or
  *final* (``final: success`` / ``final: failure``);
- an **action** runs an optional ``activity`` and moves along ``next``:
  the first branch whose condition holds wins;
- **fields** are the typed inputs of ``start`` and of manual actions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from .errors import UnknownWorkflow
from .registry import Registry

FieldType = Literal["text", "secret", "int", "bool", "choice", "map", "list"]
FIELD_TYPES: tuple[FieldType, ...] = ("text", "secret", "int", "bool", "choice", "map", "list")
StateKind = Literal["manual", "auto", "wait", "final"]

START_ACTION = "start"
"""The pseudo-action name recorded in history when a workflow is created."""


@dataclass(frozen=True)
class FieldSpec:
    """One typed input; the web layer renders a form control from it."""

    name: str
    type: FieldType
    label: str
    description: str = ""
    required: bool = True
    options: tuple[str, ...] = ()  # choice
    max_length: int | None = None  # text, list items, map values
    minimum: int | None = None  # int
    maximum: int | None = None  # int
    pattern: str | None = None  # text: a full-match regular expression
    validators: tuple[str, ...] = ()

    @property
    def secret(self) -> bool:
        """Secret values reach the activity only; never context or history."""
        return self.type == "secret"


@dataclass(frozen=True)
class Branch:
    """``{if: cond, to: STATE}``, ``{unless: cond, to: STATE}`` or ``{to: STATE}``."""

    to: str
    condition: str | None = None
    negate: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """How an automatic action is retried; ``None`` takes the config default."""

    max_attempts: int | None = None
    backoff: float | None = None  # seconds before the first retry
    factor: float | None = None  # each further wait is multiplied by this
    max_backoff: float | None = None
    errors: tuple[str, ...] = ()  # error class names retried; empty: every unhandled error


@dataclass(frozen=True)
class ActionSpec:
    name: str
    label: str
    description: str
    manual: bool
    roles: frozenset[str]
    fields: tuple[FieldSpec, ...]
    activity: str | None
    next: tuple[Branch, ...]
    retry: RetryPolicy | None = None
    on_error: tuple[tuple[str, str], ...] = ()  # (error class name, state), first match wins

    def allows(self, role: str) -> bool:
        return role in self.roles

    def targets(self) -> Iterator[str]:
        yield from (b.to for b in self.next)
        yield from (state for _, state in self.on_error)


@dataclass(frozen=True)
class StateSpec:
    name: str
    kind: StateKind
    label: str = ""
    description: str = ""
    actions: tuple[str, ...] = ()  # manual
    auto: str | None = None  # auto, wait
    outcome: Literal["success", "failure"] | None = None  # final
    # manual / wait: after this many seconds in the state the engine runs
    # ``timeout_action`` (automatic) as System: nothing waits for ever.
    timeout: int | None = None
    timeout_action: str | None = None

    @property
    def final(self) -> bool:
        return self.kind == "final"


@dataclass(frozen=True)
class WorkflowDefinition:
    wf_type: str
    description: str
    source: str  # the file it was loaded from, for messages
    initial_state: str
    start_roles: frozenset[str]
    start_fields: tuple[FieldSpec, ...]
    states: Mapping[str, StateSpec]
    actions: Mapping[str, ActionSpec]
    on_fail: str | None = None  # where an operator's "fail" moves the workflow
    # At most one unfinished workflow of this type per creator: start() then
    # returns the open one (the database enforces it, see engine.open_or_start).
    one_open_per_creator: bool = False

    def state(self, name: str) -> StateSpec:
        try:
            return self.states[name]
        except KeyError:
            raise UnknownWorkflow(
                f"workflow type {self.wf_type} has no state {name} (definition changed under a running workflow?)"
            ) from None

    def manual_actions(self, state: str, role: str | None = None) -> list[ActionSpec]:
        """The manual actions offered in ``state``, to ``role`` if given."""
        spec = self.states.get(state)
        if spec is None or spec.kind != "manual":
            return []
        found = [self.actions[name] for name in spec.actions]
        return [a for a in found if role is None or a.allows(role)]


@dataclass(frozen=True)
class DefinitionRegistry:
    """All loaded definitions plus the callables they name."""

    definitions: Mapping[str, WorkflowDefinition]
    registry: Registry = field(repr=False)

    def get(self, wf_type: str) -> WorkflowDefinition:
        try:
            return self.definitions[wf_type]
        except KeyError:
            known = ", ".join(sorted(self.definitions)) or "none loaded"
            raise UnknownWorkflow(f"no workflow type '{wf_type}' (known: {known})") from None

    def __contains__(self, wf_type: object) -> bool:
        return wf_type in self.definitions

    def types(self) -> list[str]:
        return sorted(self.definitions)
