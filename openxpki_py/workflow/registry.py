"""Python callables that definitions name: activities, conditions, validators.

A definition says ``activity: issue_certificate``; the loader refuses the
file when no callable of that kind is registered under that name, so a
typo is found when the definitions load, not when a user reaches the state.

- activity ``(ctx: ActivityContext) -> None``: does the work of an action.
  One registered with ``reads_only=True`` promises to write nothing through
  ``ctx.conn`` (it reads, and changes only the context and attributes,
  which the engine writes): it then runs without a savepoint, because a
  failure would have nothing to roll back (two statements less per action).
  As an automatic action on SQLite it also runs before its step's write
  transaction, on a read snapshot (steps.Stepper.rehearse): what it reads
  may be a moment old when the step records its result, so it must not be
  the only check of something that has to hold at commit (the issuance
  checks the CSR's key again in the transaction that stores the certificate).
- condition ``(ctx: ActivityContext) -> bool``: picks the next state.
- validator ``(value, ctx: ActivityContext) -> None``: checks one input
  field and raises :class:`~.errors.FieldRefused` with a stable ``code``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from .context import ActivityContext

Activity = Callable[["ActivityContext"], None]
Condition = Callable[["ActivityContext"], bool]
Validator = Callable[[Any, "ActivityContext"], None]
Kind = Literal["activity", "condition", "validator"]
KINDS: tuple[Kind, ...] = ("activity", "condition", "validator")

F = TypeVar("F", bound=Callable[..., Any])


class Registry:
    """Named callables of the three kinds.

    A registry may have a ``parent``: lookups fall back to it, so tests and
    sites can add their own callables on top of the shipped ones without
    changing the registry the instance runs with.  A domain collects its
    callables in a registry of its own and :meth:`include` copies them into
    the one the engine gets.
    """

    def __init__(self, parent: Registry | None = None) -> None:
        self.parent = parent
        self._entries: dict[Kind, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
        self._reads_only: set[str] = set()  # activities that write nothing through the connection

    def register(self, kind: Kind, name: str, func: Callable[..., Any], *, override: bool = False) -> None:
        """Add ``func``; replacing a parent's callable must be asked for (``override``).

        Silent shadowing would change a shipped workflow's behaviour for
        every definition loaded through this registry.
        """
        existing = self._entries[kind].get(name)
        if existing is not None and existing is not func:
            raise ValueError(f"a {kind} named '{name}' is already registered ({_describe(existing)})")
        inherited = self.parent.lookup(kind, name) if self.parent is not None else None
        if inherited is not None and not override:
            raise ValueError(f"a {kind} named '{name}' is inherited ({_describe(inherited)}); "
                             "pass override=True to replace it")
        self._entries[kind][name] = func

    def _decorator(self, kind: Kind, name: str | None, override: bool, reads_only: bool = False) -> Callable[[F], F]:
        def register(func: F) -> F:
            self.register(kind, name or func.__name__, func, override=override)
            if reads_only:
                self._reads_only.add(name or func.__name__)
            return func

        return register

    def activity(self, name: str | None = None, *, override: bool = False,
                 reads_only: bool = False) -> Callable[[F], F]:
        """Decorator: register an activity (default name: the function's); ``reads_only``: see the module."""
        return self._decorator("activity", name, override, reads_only)

    def reads_only(self, activity: str) -> bool:
        """Was the activity registered as writing nothing through the connection (here, or in the parent)?"""
        own = self._entries["activity"].get(activity)
        if own is not None:
            return activity in self._reads_only
        return self.parent is not None and self.parent.reads_only(activity)

    def condition(self, name: str | None = None, *, override: bool = False) -> Callable[[F], F]:
        return self._decorator("condition", name, override)

    def validator(self, name: str | None = None, *, override: bool = False) -> Callable[[F], F]:
        return self._decorator("validator", name, override)

    def include(self, other: Registry) -> None:
        """Register every callable ``other`` holds itself (not its parent's); clashes are refused."""
        for kind in KINDS:
            for name, func in other._entries[kind].items():
                self.register(kind, name, func)
        self._reads_only |= other._reads_only

    def lookup(self, kind: Kind, name: str) -> Callable[..., Any] | None:
        found = self._entries[kind].get(name)
        if found is None and self.parent is not None:
            return self.parent.lookup(kind, name)
        return found

    def get(self, kind: Kind, name: str) -> Callable[..., Any]:
        found = self.lookup(kind, name)
        if found is None:
            raise KeyError(f"no {kind} named '{name}' is registered")
        return found

    def names(self, kind: Kind) -> Iterator[str]:
        seen = set(self._entries[kind])
        yield from sorted(seen)
        if self.parent is not None:
            yield from (n for n in self.parent.names(kind) if n not in seen)


def _describe(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
