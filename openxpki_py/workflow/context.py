"""What an activity, condition or validator sees of its workflow.

An :class:`ActivityContext` lives for one action inside one transaction:
``conn`` is that transaction, ``context`` the workflow's key → JSON value
store (changes are written when the action commits and dropped when it
fails), ``inputs`` the validated input fields including secret ones, which
are never written anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection, RowMapping

from ..errors import WorkflowError
from . import store
from .errors import SecretInContext

MAX_KEY_LENGTH = 128


_canonical = store.canonical_json


class WorkflowContext(MutableMapping[str, Any]):
    """The workflow's context; JSON values only, changes found by comparison.

    Comparing serialised values at commit (rather than tracking writes)
    also catches in-place edits such as ``ctx.context["serials"].append(s)``.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)
        self._original = {k: _canonical(v) for k, v in self._data.items()}

    @classmethod
    def from_json(cls, stored: Mapping[str, str]) -> WorkflowContext:
        """The context from its stored JSON text, which is also what changes are compared with."""
        context = cls({})
        context._data = {k: json.loads(v) for k, v in stored.items()}
        # Stored canonically (canonical_json); text of another form only makes its key look changed.
        context._original = dict(stored)
        return context

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            raise WorkflowError(f"context keys are non-empty text of at most {MAX_KEY_LENGTH} characters")
        try:
            _canonical(value)
        except (TypeError, ValueError) as exc:
            raise WorkflowError(f"context value for '{key}' is not JSON ({exc}); store text, e.g. PEM") from None
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """(changed or new keys with values, deleted keys) since loading."""
        encoded, deleted = self.changes_json()
        return {k: self._data[k] for k in encoded}, deleted

    def changes_json(self) -> tuple[dict[str, str], set[str]]:
        """:meth:`changes` with the values as the canonical JSON text they are stored as."""
        encoded = ((k, _canonical(v)) for k, v in self._data.items())
        changed = {k: text for k, text in encoded if self._original.get(k) != text}
        deleted = set(self._original) - set(self._data)
        return changed, deleted

    def stored_keys(self) -> set[str]:
        """Keys that were in the database when the context was loaded."""
        return set(self._original)

    def snapshot(self) -> dict[str, Any]:
        return json.loads(_canonical(self._data))  # type: ignore[no-any-return]


def contains_secret(value: Any, secrets: frozenset[str]) -> bool:
    """Does ``value`` (any JSON) hold one of the secret input values verbatim?"""
    if not secrets:
        return False
    if isinstance(value, str):
        return value in secrets
    if isinstance(value, Mapping):
        return any(contains_secret(v, secrets) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(contains_secret(v, secrets) for v in value)
    return False


def redact(text: str, secrets: frozenset[str]) -> str:
    """``text`` with any secret input value replaced, for history and errors."""
    for secret in secrets:
        if secret and (text == secret or len(secret) >= 6):
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class ChildWorkflow:
    """A child as its parent sees it."""

    id: int
    wf_type: str
    state: str
    proc_state: str
    last_error: str | None
    context: Mapping[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.proc_state == "finished"

    @property
    def final(self) -> bool:
        return self.proc_state in store.FINAL_PROC_STATES


Forker = Callable[["ActivityContext", str, Mapping[str, Any]], "tuple[int, bool]"]
"""Creates a child; returns its id and whether it has automatic work to do."""


def _check_attribute_values(key: str, values: Iterable[str]) -> None:
    for v in values:
        if not isinstance(v, str) or not v or len(v) > store.ATTRIBUTE_MAX:
            raise WorkflowError(f"attribute {key}: values are text of 1..{store.ATTRIBUTE_MAX} characters")


class ActivityContext:
    """Handed to activities, conditions and validators."""

    def __init__(self, *, conn: Connection, workflow_id: int, wf_type: str, state: str, action: str,
                 actor: str, role: str, creator: str, creator_role: str, services: Any, context: WorkflowContext,
                 parent_id: int | None, now: datetime, forker: Forker,
                 children: Sequence[RowMapping] | None = None) -> None:
        self.conn = conn
        self.workflow_id = workflow_id
        self.wf_type = wf_type
        self.state = state
        self.action = action
        self.actor = actor
        self.role = role
        self.creator = creator  # who started the workflow (the requester)
        self.creator_role = creator_role
        self.services = services
        self.context = context
        self.parent_id = parent_id
        self.now = now
        self.inputs: dict[str, Any] = {}
        self.secret_inputs: frozenset[str] = frozenset()
        self.note: str | None = None  # shown in history, e.g. an approver's comment
        self.attribute_changes: dict[str, list[str]] = {}  # key → all its values from now on
        self.attribute_additions: dict[str, list[str]] = {}  # key → values to add to those it has
        self.forked: list[tuple[int, bool]] = []  # (child id, runs at once)
        self._forker = forker
        # Read once per action: the activity and the conditions after it see the same children, and none
        # of them can end meanwhile (a child that ends locks its parent first, and we hold that lock).
        self._child_rows = children
        self._children: list[ChildWorkflow] | None = None

    # --- shortcuts ----------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.context[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.context[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        return self.context.get(key, default)

    # --- search attributes ----------------------------------------------------

    def set_attribute(self, key: str, *values: str) -> None:
        """Replace the searchable values of ``key`` (none: remove it)."""
        _check_attribute_values(key, values)
        self.attribute_additions.pop(key, None)
        self.attribute_changes[key] = list(values)

    def add_attribute(self, key: str, value: str) -> None:
        """One more searchable value of ``key``, next to those it has."""
        _check_attribute_values(key, (value,))
        if key in self.attribute_changes:
            self.attribute_changes[key].append(value)
        else:
            # Added where it is missing when the action commits: the values it has need not be read.
            self.attribute_additions.setdefault(key, []).append(value)

    # --- children -----------------------------------------------------------

    def fork(self, wf_type: str, context: Mapping[str, Any] | None = None) -> int:
        """Start a child workflow (in this transaction); returns its id.

        The child runs right after this action commits, in the same request;
        a parent that should wait for it moves to a ``wait: children`` state.
        """
        child_id, runnable = self._forker(self, wf_type, context or {})
        self.forked.append((child_id, runnable))
        self._child_rows = self._children = None  # one more child: read them again when asked
        return child_id

    @property
    def read_children(self) -> bool:
        """Has :meth:`children` been asked (since the last fork)?"""
        return self._children is not None

    def children(self) -> list[ChildWorkflow]:
        """This workflow's children with their contexts, read once per action (until it forks)."""
        if self._children is None:
            rows = self._child_rows if self._child_rows is not None else store.load_children(
                self.conn, self.workflow_id)
            contexts = store.load_contexts(self.conn, [int(r["id"]) for r in rows]) if rows else {}
            self._children = [
                ChildWorkflow(int(r["id"]), r["wf_type"], r["state"], r["proc_state"], r["last_error"],
                              contexts[int(r["id"])])
                for r in rows
            ]
        return list(self._children)

    # --- the engine's checks --------------------------------------------------

    def check_no_secrets(self) -> None:
        if not self.secret_inputs:
            return  # nothing to look for (and encoding every value to find the changed ones costs)
        changed, _ = self.context.changes()
        for key, value in changed.items():
            if contains_secret(value, self.secret_inputs):
                raise SecretInContext(f"action {self.action} tried to keep a secret input in context key '{key}'")
        # Substring search only for longer secrets: a 4-digit PIN would match
        # innocent comments; a short secret copied verbatim is still caught.
        if self.note is not None and any(
            s == self.note or (len(s) >= 6 and s in self.note) for s in self.secret_inputs
        ):
            raise SecretInContext(f"action {self.action} tried to write a secret input into the history note")
