"""Conditions and validators every definition may use."""

from __future__ import annotations

from typing import Any

from .context import ActivityContext
from .errors import FieldRefused
from .registry import Registry

callables = Registry()
"""Registered into every engine's registry by :func:`~.domain.build_registry`."""


@callables.condition("children_succeeded")
def children_succeeded(ctx: ActivityContext) -> bool:
    """Every child workflow ended in a success state (and there is at least one)."""
    children = ctx.children()
    return bool(children) and all(c.succeeded for c in children)


@callables.condition("children_failed")
def children_failed(ctx: ActivityContext) -> bool:
    """At least one child workflow ended in failure."""
    return any(c.final and not c.succeeded for c in ctx.children())


@callables.validator("single_line")
def single_line(value: Any, ctx: ActivityContext) -> None:
    """Text without line breaks or other control characters (names, comments)."""
    if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise FieldRefused("must be a single line without control characters", code="field.single_line")
