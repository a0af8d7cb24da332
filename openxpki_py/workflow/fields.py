"""Check input values against their field specs, then run the validators.

Type and shape are checked first (so validators get a value of the right
type), then each named validator; every refusal is collected per field so
a form can show them all at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import FieldProblem, OpenXPKIError
from .definition import FieldSpec
from .errors import FieldRefused, InputInvalid
from .registry import Registry

if TYPE_CHECKING:
    from .context import ActivityContext


def _coerce(spec: FieldSpec, value: Any) -> Any:
    """Return the value in its field's type or raise FieldRefused."""
    t = spec.type
    if t in ("text", "secret", "choice"):
        if not isinstance(value, str):
            raise FieldRefused("expected text", code="field.type")
        if spec.max_length is not None and len(value) > spec.max_length:
            raise FieldRefused(f"longer than {spec.max_length} characters", code="field.length")
        if t == "choice" and value not in spec.options:
            raise FieldRefused(f"must be one of {', '.join(spec.options)}", code="field.choice")
        if spec.pattern is not None and re.fullmatch(spec.pattern, value) is None:
            raise FieldRefused("has not the expected form", code="field.pattern")
        return value
    if t == "int":
        if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
            value = int(value.strip())  # form posts are text
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldRefused("expected a whole number", code="field.type")
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            raise FieldRefused(f"must be between {spec.minimum} and {spec.maximum}", code="field.range")
        return value
    if t == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false", "on", "off", "1", "0"):
            return value.lower() in ("true", "on", "1")
        if not isinstance(value, bool):
            raise FieldRefused("expected true or false", code="field.type")
        return value
    if t == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FieldRefused("expected a list of text", code="field.type")
        return list(value)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise FieldRefused("expected a mapping of text to text", code="field.type")
    return dict(value)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def check_inputs(fields: Iterable[FieldSpec], inputs: Mapping[str, Any], *, registry: Registry,
                 ctx: ActivityContext, allow_extra: bool = False) -> dict[str, Any]:
    """Validated inputs (absent optional fields are left out) or InputInvalid."""
    specs = {f.name: f for f in fields}
    problems: dict[str, FieldProblem] = {}
    checked: dict[str, Any] = {}
    for name in inputs:
        if name not in specs and not allow_extra:
            problems[name] = FieldProblem(name, "field.unknown", "no such field here")
    for name, spec in specs.items():
        value = inputs.get(name)
        if _empty(value):
            if spec.required:
                problems[name] = FieldProblem(name, "field.required", "required")
            continue
        try:
            checked[name] = _coerce(spec, value)
        except FieldRefused as exc:
            problems[name] = FieldProblem(name, exc.code, exc.message)
    ctx.inputs = checked  # validators may look at the other fields
    verdict: str | None = None
    for name, value in list(checked.items()):
        for validator_name in specs[name].validators:
            validator = registry.get("validator", validator_name)
            try:
                validator(value, ctx)
            except OpenXPKIError as exc:  # FieldRefused, PolicyViolation …
                problems[name] = FieldProblem(name, exc.code, exc.message)
                verdict = verdict or exc.code
                break
    if problems:
        raise InputInvalid(problems.values(), code=verdict)
    return checked
