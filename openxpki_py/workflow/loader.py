"""Read workflow definition files and check them completely.

Everything that can be wrong in a definition is found here, at load time,
with the file, the path inside it and the problem: unknown activities,
conditions, validators, roles or error classes; undefined fields or
states; unreachable states; dead ends (states from which no final state
can be reached).  A definition that loads can only fail at run time
because an activity fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from .. import roles
from ..configreader import Reader
from ..errors import ConfigError, OpenXPKIError
from .definition import (
    FIELD_TYPES,
    ActionSpec,
    Branch,
    DefinitionRegistry,
    FieldSpec,
    RetryPolicy,
    StateSpec,
    WorkflowDefinition,
)
from .errors import DefinitionError
from .registry import Kind, Registry

KNOWN_ROLES: frozenset[str] = roles.KNOWN
"""Roles the auth handlers grant (DESIGN §5); ``System`` is the worker."""

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def error_class_names() -> frozenset[str]:
    """Names usable in ``on_error`` / ``retry.errors``: the project's error classes.

    Walked at load time, so a class exists once its module is imported: a
    domain's activities import the errors its definitions name, and the
    caller has imported the domains before it loads their definitions.
    """
    names: set[str] = set()
    pending: list[type[BaseException]] = [OpenXPKIError]
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return frozenset(names)


class _FileLoader:
    """Parses one file; every error carries the file name."""

    def __init__(self, path: Path, registry: Registry, roles: frozenset[str]) -> None:
        self.file = str(path)
        self.registry = registry
        self.roles = roles
        self.error_names = error_class_names()

    def fail(self, where: str, problem: str) -> DefinitionError:
        return DefinitionError(self.file, where, problem)

    def load(self, data: object, stem: str) -> WorkflowDefinition:
        try:
            return self._load(data, stem)
        except DefinitionError:
            raise
        except ConfigError as exc:  # from Reader: "path: problem"
            where, _, problem = exc.message.partition(": ")
            raise self.fail(where, problem) from None

    def _load(self, data: object, stem: str) -> WorkflowDefinition:
        root = Reader(data)
        wf_type = root.str("type")
        if wf_type != stem:
            raise self.fail("type", f"must equal the file name '{stem}' so the file can be found by type")
        fields = {name: self._field(name, r) for name, r in root.sections("fields").items()}
        start = root.section("start", required=True)
        start_roles = self._roles(start, "roles")
        start_fields = self._inputs(start, fields)
        one_open_per_creator = start.bool("one_open_per_creator", False)
        for spec in start_fields:
            if spec.secret:
                raise self.fail("start.input", f"field '{spec.name}' is secret; the start context is stored")
        start.finish()
        states = {name: self._state(name, r) for name, r in root.sections("states").items()}
        if not states:
            raise self.fail("states", "no states are defined")
        usage = self._action_usage(states)
        actions = {name: self._action(name, r, fields, usage.get(name)) for name, r in root.sections("actions").items()}
        initial = root.str("initial_state")
        on_fail = root.str("on_fail", None)
        definition = WorkflowDefinition(
            wf_type=wf_type,
            description=root.str("description", ""),
            source=self.file,
            initial_state=initial,
            start_roles=start_roles,
            start_fields=start_fields,
            states=states,
            actions=actions,
            on_fail=on_fail,
            one_open_per_creator=one_open_per_creator,
        )
        root.finish()
        self._check_graph(definition, usage)
        return definition

    # --- parts -------------------------------------------------------------

    def _roles(self, r: Reader, key: str) -> frozenset[str]:
        roles = r.str_list(key)
        for role in roles:
            if role not in self.roles:
                raise self.fail(r.key_path(key), f"unknown role '{role}' (known: {', '.join(sorted(self.roles))})")
        return frozenset(roles)

    def _known(self, kind: Kind, name: str, where: str) -> str:
        if self.registry.lookup(kind, name) is None:
            raise self.fail(where, f"unknown {kind} '{name}' (none registered under that name)")
        return name

    def _field(self, name: str, r: Reader) -> FieldSpec:
        if not NAME_RE.match(name):
            raise self.fail(r.path, "field names are letters, digits and _ (at most 64)")
        ftype = r.choice("type", FIELD_TYPES)
        validators = tuple(
            self._known("validator", v, f"{r.path}.validators[{i}]")
            for i, v in enumerate(r.str_list("validators", []))
        )
        spec = FieldSpec(
            name=name,
            type=ftype,
            label=r.str("label", name.replace("_", " ").capitalize()),
            description=r.str("description", ""),
            required=r.bool("required", True),
            options=tuple(r.str_list("options", [])),
            max_length=r.int("max_length", None, minimum=1),
            minimum=r.int("min", None),
            maximum=r.int("max", None),
            pattern=r.str("pattern", None),
            validators=validators,
        )
        r.finish()
        if ftype == "choice" and not spec.options:
            raise self.fail(r.path, "a choice field needs options")
        if spec.options and ftype != "choice":
            raise self.fail(r.key_path("options"), "only choice fields have options")
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as exc:
                raise self.fail(r.key_path("pattern"), f"not a regular expression: {exc}") from None
        return spec

    def _inputs(self, r: Reader, fields: Mapping[str, FieldSpec]) -> tuple[FieldSpec, ...]:
        names = r.str_list("input", [])
        for i, name in enumerate(names):
            if name not in fields:
                raise self.fail(f"{r.key_path('input')}[{i}]", f"undefined field '{name}' (not under fields:)")
        if len(set(names)) != len(names):
            raise self.fail(r.key_path("input"), "a field is listed twice")
        return tuple(fields[n] for n in names)

    def _state(self, name: str, r: Reader) -> StateSpec:
        if not NAME_RE.match(name):
            raise self.fail(r.path, "state names are letters, digits and _ (at most 64)")
        label, description = r.str("label", name), r.str("description", "")
        given = [k for k in ("actions", "auto", "final") if r.has(k)]
        wait = r.choice("wait", ("children",), None)
        if len(given) != 1:
            raise self.fail(r.path, "a state has exactly one of: actions (manual), auto (automatic), final")
        if wait is not None and given != ["auto"]:
            raise self.fail(r.key_path("wait"), "a waiting state needs auto: the action to run once woken")
        if r.has("final"):
            outcome: Literal["success", "failure"] = r.choice("final", ("success", "failure"))
            r.finish()
            return StateSpec(name, "final", label, description, outcome=outcome)
        timeout, timeout_action = self._timeout(r)
        if r.has("auto"):
            auto = r.str("auto")
            r.finish()
            if timeout is not None and not wait:
                raise self.fail(r.key_path("timeout"), "only manual and waiting states wait long enough for one")
            return StateSpec(name, "wait" if wait else "auto", label, description, auto=auto,
                             timeout=timeout, timeout_action=timeout_action)
        actions = tuple(r.str_list("actions"))
        r.finish()
        if not actions:
            raise self.fail(r.key_path("actions"), "a manual state offers at least one action")
        return StateSpec(name, "manual", label, description, actions=actions, timeout=timeout,
                         timeout_action=timeout_action)

    def _timeout(self, r: Reader) -> tuple[int | None, str | None]:
        """``timeout: {after: SECONDS, action: NAME}``: how long the state may wait, and what ends it."""
        if not r.has("timeout"):
            r.raw("timeout", None)
            return None, None
        t = r.section("timeout")
        after = t.int("after", minimum=1)
        action = t.str("action")
        t.finish()
        return after, action

    def _action_usage(self, states: Mapping[str, StateSpec]) -> dict[str, tuple[bool, str]]:
        """action name → (manual?, where first used); used both ways is an error."""
        usage: dict[str, tuple[bool, str]] = {}
        for state in states.values():
            uses = [(a, True, f"states.{state.name}.actions[{i}]") for i, a in enumerate(state.actions)]
            if state.auto:
                uses.append((state.auto, False, f"states.{state.name}.auto"))
            if state.timeout_action:
                uses.append((state.timeout_action, False, f"states.{state.name}.timeout.action"))
            for action, manual, where in uses:
                if action in usage and usage[action][0] != manual:
                    raise self.fail(where, f"action '{action}' is used as both manual and automatic")
                usage.setdefault(action, (manual, where))
        return usage

    def _action(self, name: str, r: Reader, fields: Mapping[str, FieldSpec],
                usage: tuple[bool, str] | None) -> ActionSpec:
        if usage is None:
            raise self.fail(r.path, "action is never used by a state")
        manual = usage[0]
        roles: frozenset[str] = frozenset()
        if manual:
            if not r.has("roles"):
                raise self.fail(r.path, f"manual action (used at {usage[1]}) needs roles: who may run it")
            roles = self._roles(r, "roles")
        elif r.has("roles") or r.has("input"):
            raise self.fail(r.path, f"automatic action (used at {usage[1]}) takes no roles or input")
        inputs = self._inputs(r, fields)
        activity = r.str("activity", None)
        if activity is not None:
            self._known("activity", activity, r.key_path("activity"))
        elif any(f.secret for f in inputs):
            raise self.fail(r.key_path("input"), "secret fields need an activity: they are never stored")
        spec = ActionSpec(
            name=name,
            label=r.str("label", name.replace("_", " ").capitalize()),
            description=r.str("description", ""),
            manual=manual,
            roles=roles,
            fields=inputs,
            activity=activity,
            next=self._next(r),
            retry=self._retry(r),
            on_error=self._on_error(r),
        )
        r.finish()
        return spec

    def _next(self, r: Reader) -> tuple[Branch, ...]:
        raw = r.raw("next")
        where = r.key_path("next")
        if isinstance(raw, str):
            return (Branch(to=raw),)
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "expected a state name or a list of {if|unless: condition, to: STATE}")
        branches: list[Branch] = []
        for i, item in enumerate(raw):
            b = Reader(item, f"{where}[{i}]")
            cond_key = "if" if b.has("if") else "unless" if b.has("unless") else None
            cond = b.str(cond_key) if cond_key else None
            if cond is not None:
                self._known("condition", cond, b.key_path(cond_key or "if"))
            branches.append(Branch(to=b.str("to"), condition=cond, negate=cond_key == "unless"))
            b.finish()
            if cond is None and i != len(raw) - 1:
                raise self.fail(f"{where}[{i}]", "only the last branch may be unconditional")
        if branches[-1].condition is not None:
            raise self.fail(f"{where}[{len(raw) - 1}]", "the last branch must be unconditional ({to: STATE})")
        return tuple(branches)

    def _error_name(self, name: str, where: str) -> str:
        if name not in self.error_names:
            raise self.fail(where, f"unknown error class '{name}' (see openxpki_py/errors.py)")
        return name

    def _retry(self, r: Reader) -> RetryPolicy | None:
        if not r.has("retry"):
            r.raw("retry", None)
            return None
        if r.raw("retry") is True:
            return RetryPolicy()
        rr = r.section("retry")
        policy = RetryPolicy(
            max_attempts=rr.int("max_attempts", None, minimum=1),
            backoff=rr.float("backoff", None, minimum=0),
            factor=rr.float("factor", None, minimum=1),
            max_backoff=rr.float("max_backoff", None, minimum=0),
            errors=tuple(self._error_name(n, f"{rr.key_path('errors')}[{i}]")
                         for i, n in enumerate(rr.str_list("errors", []))),
        )
        rr.finish()
        return policy

    def _on_error(self, r: Reader) -> tuple[tuple[str, str], ...]:
        mapping = r.str_map("on_error", {})
        return tuple((self._error_name(k, f"{r.key_path('on_error')}.{k}"), v) for k, v in mapping.items())

    # --- the whole graph -------------------------------------------------------

    def _check_graph(self, d: WorkflowDefinition, usage: Mapping[str, tuple[bool, str]]) -> None:
        for action, (_, where) in usage.items():
            if action not in d.actions:
                raise self.fail(where, f"undefined action '{action}' (not under actions:)")
        if d.initial_state not in d.states:
            raise self.fail("initial_state", f"undefined state '{d.initial_state}'")
        if d.states[d.initial_state].final:
            raise self.fail("initial_state", "the initial state must not be final")
        if d.on_fail is not None:
            fail_state = d.states.get(d.on_fail)
            if fail_state is None or fail_state.outcome != "failure":
                raise self.fail("on_fail", f"'{d.on_fail}' must be a state with final: failure")
        edges: dict[str, set[str]] = {}
        for state in d.states.values():
            out: set[str] = set()
            names = list(state.actions) + [a for a in (state.auto, state.timeout_action) if a]
            for action in names:
                spec = d.actions[action]
                for i, target in enumerate(spec.targets()):
                    if target not in d.states:
                        raise self.fail(f"actions.{action}", f"undefined state '{target}' (branch {i})")
                    out.add(target)
            if d.on_fail is not None and not state.final:
                out.add(d.on_fail)  # an operator's "fail" reaches it from anywhere
            edges[state.name] = out
        reachable = _closure([d.initial_state], edges)
        for name in d.states:
            if name not in reachable:
                raise self.fail(f"states.{name}", f"unreachable from the initial state {d.initial_state}")
        reverse: dict[str, set[str]] = {name: set() for name in d.states}
        for src, targets in edges.items():
            for dst in targets:
                reverse[dst].add(src)
        can_finish = _closure([n for n, s in d.states.items() if s.final], reverse)
        for name in d.states:
            if name not in can_finish:
                raise self.fail(f"states.{name}", "dead end: no final state can be reached from here")


def _closure(start: Iterable[str], edges: Mapping[str, set[str]]) -> set[str]:
    seen = set(start)
    pending = list(seen)
    while pending:
        for nxt in edges.get(pending.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                pending.append(nxt)
    return seen


def load_definition_file(path: Path, *, registry: Registry,
                         roles: Iterable[str] = KNOWN_ROLES) -> WorkflowDefinition:
    """Load and check one file against the callables of ``registry``."""
    loader = _FileLoader(path, registry, frozenset(roles))
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise loader.fail("", f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise loader.fail(where, f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return loader.load(data, path.stem)


def load_definitions(dirs: Iterable[str | Path], *, registry: Registry,
                     roles: Iterable[str] = KNOWN_ROLES) -> DefinitionRegistry:
    """Load every ``*.yaml`` of ``dirs``, in order.

    A later folder may replace an earlier folder's type (a site's own
    issuance flow over the shipped one); two files of the same type in one
    folder cannot happen (type = name).
    """
    definitions: dict[str, WorkflowDefinition] = {}
    for folder in (Path(d) for d in dirs):
        if not folder.is_dir():
            raise DefinitionError(str(folder), "", "definition folder does not exist")
        for path in sorted(folder.glob("*.yaml")):
            definition = load_definition_file(path, registry=registry, roles=roles)
            definitions[definition.wf_type] = definition
    return DefinitionRegistry(definitions, registry)
