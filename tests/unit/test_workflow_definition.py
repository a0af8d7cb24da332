"""Loading and checking workflow definitions: every mistake is named."""

from __future__ import annotations

import copy
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from data.workflow.activities_for_tests import REGISTRY, load_test_definitions

from openxpki_py import domains
from openxpki_py.workflow import load_definitions
from openxpki_py.workflow.errors import DefinitionError, UnknownWorkflow
from openxpki_py.workflow.loader import load_definition_file

GOOD = """
type: demo
start:
  roles: [User]
  input: [subject]
initial_state: CHECK
fields:
  subject: {type: text}
  comment: {type: text, required: false}
states:
  CHECK: {auto: check}
  PENDING: {actions: [approve]}
  DONE: {final: success}
actions:
  check:
    activity: note_request
    next:
      - if: needs_approval
        to: PENDING
      - to: DONE
  approve:
    roles: [RA Operator]
    input: [comment]
    next: DONE
"""


def write(tmp_path: Path, text: str, name: str = "demo") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> None:
    load_definition_file(write(tmp_path, text), registry=REGISTRY)


def test_good_definition_loads(tmp_path: Path) -> None:
    d = load_definition_file(write(tmp_path, GOOD), registry=REGISTRY)
    assert d.wf_type == "demo"
    assert d.states["CHECK"].kind == "auto"
    assert [a.name for a in d.manual_actions("PENDING", "RA Operator")] == ["approve"]
    assert d.manual_actions("PENDING", "User") == []
    assert d.actions["approve"].fields[0].required is False


def test_test_definitions_load() -> None:
    defs = load_test_definitions()
    assert defs.types() == ["test_approval", "test_child", "test_deadline", "test_enrollment", "test_parent", "test_secret"]
    with pytest.raises(UnknownWorkflow, match="no workflow type 'nope'"):
        defs.get("nope")


def test_shipped_definitions_load() -> None:
    defs = domains.load_definitions()
    assert defs.types() == ["certificate_issuance", "certificate_revocation", "crl_issuance", "key_recovery",
                            "pin_unblock", "smartcard_personalization"]
    for wf_type in defs.types():
        assert defs.get(wf_type).source.endswith(f"{wf_type}.yaml")


@pytest.mark.parametrize(
    ("old", "new", "where", "problem"),
    [
        ("activity: note_request", "activity: note_requets", "actions.check.activity",
         "unknown activity 'note_requets'"),
        ("if: needs_approval", "if: needs_aproval", "actions.check.next[0].if", "unknown condition 'needs_aproval'"),
        ("roles: [RA Operator]", "roles: [Operator]", "actions.approve.roles", "unknown role 'Operator'"),
        ("input: [comment]", "input: [coment]", "actions.approve.input[0]", "undefined field 'coment'"),
        ("  - to: DONE\n", "  - to: FINISHED\n", "actions.check", "undefined state 'FINISHED'"),
        ("subject: {type: text}", "subject: {type: txt}", "fields.subject.type", "expected one of text"),
        ("type: demo", "type: other", "type", "must equal the file name 'demo'"),
        ("initial_state: CHECK", "initial_state: START", "initial_state", "undefined state 'START'"),
        ("    roles: [RA Operator]\n", "", "actions.approve", "manual action (used at states.PENDING.actions[0]) "
         "needs roles"),
        ("      - to: DONE\n", "", "actions.check.next[0]", "the last branch must be unconditional"),
        ("subject: {type: text}", "subject: {type: text, validators: [nope]}", "fields.subject.validators[0]",
         "unknown validator 'nope'"),
        ("  DONE: {final: success}", "  DONE: {final: success}\n  LOST: {final: failure}", "states.LOST",
         "unreachable from the initial state CHECK"),
        ("  PENDING: {actions: [approve]}", "  PENDING: {actions: [approve]}\n  LIMBO: {actions: [approve]}",
         "states.LIMBO", "unreachable"),
        ("    next: DONE\n", "    next: PENDING\n", "states.PENDING", "dead end: no final state can be reached"),
        ("  CHECK: {auto: check}", "  CHECK: {auto: check, actions: [approve]}", "states.CHECK",
         "exactly one of"),
        ("    next: DONE\n", "    next: DONE\n    on_error: {TokenEror: DONE}\n", "actions.approve.on_error.TokenEror",
         "unknown error class 'TokenEror'"),
        ("  subject: {type: text}", "  subject: {type: text, colour: red}", "fields.subject.colour", "unknown key"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, old: str, new: str, where: str, problem: str) -> None:
    assert old in GOOD, old
    with pytest.raises(DefinitionError) as info:
        load(tmp_path, GOOD.replace(old, new, 1))
    err = info.value
    assert err.file.endswith("demo.yaml")
    assert err.path == where, err.message
    assert problem in err.problem, err.message
    assert err.message.startswith(f"{err.file}: {where}: ")


def test_unused_action_and_dual_use(tmp_path: Path) -> None:
    extra = GOOD + "  orphan:\n    next: DONE\n"
    with pytest.raises(DefinitionError, match=r"actions\.orphan: action is never used"):
        load(tmp_path, extra)
    dual = GOOD.replace("  DONE: {final: success}", "  DONE: {final: success}\n  AGAIN: {auto: approve}")
    with pytest.raises(DefinitionError, match="used as both manual and automatic"):
        load(tmp_path, dual)


def test_secret_fields_are_never_start_input(tmp_path: Path) -> None:
    text = GOOD.replace("subject: {type: text}", "subject: {type: secret}")
    with pytest.raises(DefinitionError, match=r"start\.input: field 'subject' is secret"):
        load(tmp_path, text)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match=r"demo\.yaml: line \d+, column \d+: not valid YAML"):
        load(tmp_path, "type: demo\nstates:\n  - [unclosed\n")


def test_later_folder_replaces_type(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write(site, GOOD.replace("type: demo", "type: test_child").replace("description", "x"), "test_child")
    defs = load_definitions([Path(__file__).parents[1] / "data/workflow/defs", site], registry=REGISTRY)
    assert defs.get("test_child").source == str(site / "test_child.yaml")


def test_site_folder_replaces_shipped_type(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    write(site, GOOD.replace("type: demo", "type: crl_issuance"), "crl_issuance")
    defs = domains.load_definitions([site], registry=REGISTRY)
    assert defs.get("crl_issuance").source == str(site / "crl_issuance.yaml")
    assert defs.get("certificate_issuance").source.endswith("certificates/workflows/certificate_issuance.yaml")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="definition folder does not exist"):
        load_definitions([tmp_path / "nope"], registry=REGISTRY)


def test_timeouts_are_checked_at_load(tmp_path: Path) -> None:
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "workflow" / "defs" / "test_deadline.yaml")
                          .read_text())
    def undefined_action(d: dict[str, Any]) -> None:
        d["states"]["WAITING"]["timeout"]["action"] = "nope"
        del d["actions"]["give_up"]

    for change, where in ((undefined_action, "undefined action 'nope'"),
                          (lambda d: d["states"]["WAITING"]["timeout"].update(after=0), "timeout.after"),
                          (lambda d: d["states"]["WAITING"]["timeout"].update(action="act"), "manual and automatic")):
        data = copy.deepcopy(base)
        change(data)
        path = tmp_path / "test_deadline.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(DefinitionError, match=re.escape(where)):
            load_definition_file(path, registry=REGISTRY)
