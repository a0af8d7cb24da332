"""``openxpki-py workflow …`` and ``openxpki-py worker`` for operators and scripts.

Output is for people by default and JSON with ``--json``.  Errors are
raised, not printed: the main CLI maps them to messages and exit codes in
one place.  Secret fields are asked for at a prompt (``--secret pin``),
never taken from the command line where ``ps`` and shell history see them.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, TextIO

from .. import roles
from ..errors import WorkflowError
from .engine import WorkflowEngine
from .view import WorkflowSummary, WorkflowView
from .worker import Worker

OPERATOR_ROLE = roles.CA_OPERATOR


def register(subparsers: Any) -> None:
    """Add ``workflow`` and ``worker`` to the main parser's subcommands.

    Each leaf sets ``handler(args) -> int`` (builds the instance's services
    from ``args.config``, as the main CLI expects) and
    ``workflow_handler(args, engine) -> int`` for callers that have an engine.
    """
    wf = subparsers.add_parser("workflow", help="start, inspect and act on workflows")
    sub = wf.add_subparsers(dest="workflow_command", required=True, metavar="COMMAND")

    def leaf(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--role", default=OPERATOR_ROLE, help=f"role to act in (default: {OPERATOR_ROLE})")
        p.set_defaults(workflow_handler=handler, handler=partial(with_services, handler))
        return p

    p = leaf("start", "start a workflow; its start fields are given with --set", cmd_start)
    p.add_argument("wf_type", metavar="TYPE")
    _input_options(p)
    p = leaf("show", "show a workflow: state, context, history, available actions", cmd_show)
    p.add_argument("workflow_id", metavar="ID", type=int)
    p = leaf("list", "list workflows, newest first", cmd_list)
    p.add_argument("--type", dest="wf_type")
    p.add_argument("--state")
    p.add_argument("--proc-state", choices=["running", "manual", "waiting", "retry", "exception", "finished",
                                            "failed"])
    p.add_argument("--attr", action="append", default=[], metavar="KEY=VALUE", help="search attribute")
    p.add_argument("--limit", type=int, default=50)
    p = leaf("execute", "run a manual action", cmd_execute)
    p.add_argument("workflow_id", metavar="ID", type=int)
    p.add_argument("action", metavar="ACTION")
    p.add_argument("--version", type=int, default=None,
                   help="refuse if the workflow changed since this version (from 'show')")
    _input_options(p)
    p = leaf("retry", "run a workflow in exception (or waiting to retry) again now", cmd_retry)
    p.add_argument("workflow_id", metavar="ID", type=int)
    p.add_argument("--note", default=None)
    p = leaf("fail", "end a workflow as failed; its parent is woken", cmd_fail)
    p.add_argument("workflow_id", metavar="ID", type=int)
    p.add_argument("--reason", required=True)

    w = subparsers.add_parser("worker", help="resume due workflows until SIGTERM")
    w.add_argument("--once", action="store_true", help="one round, then exit (for cron or tests)")
    w.add_argument("--poll", type=float, default=None, help="seconds between rounds (default: config)")
    w.set_defaults(workflow_handler=cmd_worker, handler=partial(with_services, cmd_worker))


def with_services(command: Any, args: argparse.Namespace) -> int:
    """Run ``command`` with the engine of the instance named by ``--config``."""
    from ..config import load_config
    from ..services import Services

    services = Services(load_config(getattr(args, "config", None)))
    try:
        return int(command(args, services.workflows))
    finally:
        services.close()


def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="an input field (repeat)")
    p.add_argument("--set-json", action="append", default=[], metavar="FIELD=JSON",
                   help="an input field given as JSON (lists, maps, numbers)")
    p.add_argument("--secret", action="append", default=[], metavar="FIELD", help="prompt for a secret field")


def _pairs(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkflowError(f"{option} {item!r}: expected FIELD=VALUE")
        pairs.append((key, value))
    return pairs


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    inputs: dict[str, Any] = dict(_pairs(args.set, "--set"))
    for key, text in _pairs(args.set_json, "--set-json"):
        try:
            inputs[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"--set-json {key}: not JSON: {exc.msg}") from None
    for key in args.secret:
        inputs[key] = getpass.getpass(f"{key}: ")
    return inputs


def _actor(args: argparse.Namespace) -> str:
    """The main parser's ``--actor``; its default "cli" gains the login name."""
    actor = getattr(args, "actor", None) or "cli"
    return f"cli:{getpass.getuser()}" if actor == "cli" else str(actor)


# --- handlers ------------------------------------------------------------------

def cmd_start(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    view = engine.start(args.wf_type, actor=_actor(args), role=args.role, context=_inputs(args))
    _print_view(view, args, out)
    return 0


def cmd_show(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    _print_view(engine.get(args.workflow_id), args, out)
    return 0


def cmd_list(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    found = engine.search(wf_type=args.wf_type, state=args.state, proc_state=args.proc_state, limit=args.limit,
                          **dict(_pairs(args.attr, "--attr")))
    if args.json:
        json.dump([s.as_json() for s in found], out, indent=2)
        out.write("\n")
        return 0
    out.write(f"{'ID':>7}  {'TYPE':<24} {'STATE':<20} {'PROC':<10} {'CREATOR':<20} UPDATED\n")
    for s in found:
        out.write(f"{s.id:>7}  {s.wf_type:<24} {s.state:<20} {s.proc_state:<10} {s.creator[:20]:<20} "
                  f"{s.updated_at:%Y-%m-%d %H:%M:%S}\n")
    return 0


def cmd_execute(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    view = engine.execute(args.workflow_id, args.action, actor=_actor(args), role=args.role, inputs=_inputs(args),
                          expected_version=args.version)
    _print_view(view, args, out)
    return 0


def cmd_retry(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    _print_view(engine.retry(args.workflow_id, actor=_actor(args), role=args.role, note=args.note), args, out)
    return 0


def cmd_fail(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    _print_view(engine.fail(args.workflow_id, actor=_actor(args), role=args.role, reason=args.reason), args, out)
    return 0


def cmd_worker(args: argparse.Namespace, engine: WorkflowEngine, out: TextIO = sys.stdout) -> int:
    from ..housekeeping import purge_expired

    services = engine.services
    housekeeping = partial(purge_expired, services) if getattr(services, "config", None) is not None else None
    checkpoints = getattr(services, "audit_checkpoints", None)  # signed audit checkpoints, if configured
    worker = Worker(engine, poll_interval=args.poll, housekeeping=housekeeping, audit_checkpoints=checkpoints)
    if args.once:
        out.write(f"resumed {worker.run_once()} workflow(s)\n")
    else:
        worker.run()
    return 0


# --- output --------------------------------------------------------------------

def _print_view(view: WorkflowView, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        data = view.as_json()
        data["available_actions"] = [_action_json(a) for a in view.available_actions(args.role)]
        json.dump(data, out, indent=2, default=str)
        out.write("\n")
        return
    out.write(_summary_text(view))
    if view.context:
        out.write("context:\n")
        for key in sorted(view.context):
            out.write(f"  {key}: {_short(view.context[key])}\n")
    if view.attributes:
        out.write("search attributes: " + ", ".join(f"{k}={'|'.join(v)}" for k, v in view.attributes.items()) + "\n")
    out.write("history:\n")
    for h in view.history:
        mark = "" if h.outcome == "ok" else f" [{h.outcome}]"
        note = f" — {h.note}" if h.note else ""
        out.write(f"  {h.logged_at:%Y-%m-%d %H:%M:%S}  {h.action:<16} {h.from_state} → {h.to_state}  "
                  f"{h.actor} ({h.role}){mark}{note}\n")
    actions = view.available_actions(args.role)
    if actions:
        out.write(f"available to {args.role} (version {view.version}):\n")
        for a in actions:
            fields = ", ".join(f"{f.name}{'' if f.required else '?'}:{f.type}" for f in a.fields)
            out.write(f"  {a.name}({fields})  {a.label}\n")


def _summary_text(s: WorkflowSummary) -> str:
    lines = [f"workflow {s.id} ({s.wf_type}): state {s.state}, {s.proc_state}, version {s.version}"]
    lines.append(f"created by {s.creator} ({s.role}) at {s.created_at:%Y-%m-%d %H:%M:%S} UTC")
    if s.parent_id is not None:
        lines.append(f"child of workflow {s.parent_id}")
    if s.last_error:
        lines.append(f"last error: {s.last_error}")
    if s.proc_state == "retry" and s.wake_at is not None:
        lines.append(f"next attempt: {s.wake_at:%Y-%m-%d %H:%M:%S} UTC (attempts so far: {s.retry_count})")
    if s.proc_state == "exception":
        lines.append("needs an operator: 'workflow retry' or 'workflow fail --reason …'")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "⏎")
    return text if len(text) <= 100 else text[:97] + "..."


def _action_json(action: Any) -> dict[str, Any]:
    return {"name": action.name, "label": action.label,
            "fields": [{"name": f.name, "type": f.type, "label": f.label, "required": f.required,
                        "options": list(f.options)} for f in action.fields]}
