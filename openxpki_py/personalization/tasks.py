"""Where a personalization stands, for the agent (its next task) and for the
page (what to show).  Both are derived from the workflow alone: nothing here
is stored, so any Apache process answers any poll the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

WF_TYPE = "smartcard_personalization"
FINAL_FAILURE = ("FAILED", "CANCELLED")
#: The agent's task while the user is asked to confirm the reported card (CONFIRM_TOKEN).
CONFIRM_CARD_TASK: Mapping[str, Any] = MappingProxyType(
    {"task": "wait", "reason": "confirm the card in your browser", "retry_after": 1})


@dataclass(frozen=True)
class Step:
    """One line of the page's progress list."""

    label: str
    status: str  # done | active | waiting | failed | skipped


@dataclass
class Progress:
    """What the page shows: a phase, a sentence, the steps."""

    phase: str  # waiting_for_card | confirm_card | working | approval | done | failed
    message: str
    steps: list[Step] = field(default_factory=list)
    token: dict[str, Any] | None = None
    #: Which certificates the reported card will get (and which not, why), before and while it is worked on.
    plan: list[Step] = field(default_factory=list)


def _to_issue(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["status"] not in ("kept", "skipped")]


def _plan_steps(ctx: dict[str, Any]) -> list[Step]:
    """The card plan as the page lists it: what goes on the card (with its key), what cannot, and why."""
    plan = ctx.get("card_plan") or {}
    steps = []
    for entry in plan.get("types") or []:
        key = entry.get("key_name", "")
        if entry["status"] == "planned" and entry.get("key_origin") == "escrowed":
            no_history = "" if entry.get("key_history", True) else \
                " (the card has one slot for it: the owner's earlier keys cannot go on this card)"
            steps.append(Step(f"{entry['type']} certificate, {key} key made on the server (escrowed) and imported "
                              f"onto the card{no_history}", "waiting"))
        elif entry["status"] == "planned":
            steps.append(Step(f"{entry['type']} certificate, {key} key made on the card", "waiting"))
        else:
            steps.append(Step(f"Not on this card: {entry['type']}: {entry.get('reason', '')}", "skipped"))
    return steps


def _position(ctx: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    entries = ctx["certificates"]
    entry = entries[ctx["current"]]
    todo = _to_issue(entries)
    return entry, todo.index(entry) + 1, len(todo)


def _child(children: Sequence[Any], entry: dict[str, Any]) -> Any:
    return next((c for c in children if c.id == entry.get("child_id")), None)


def _child_waits_for_approval(children: Sequence[Any], entry: dict[str, Any]) -> bool:
    child = _child(children, entry)
    return child is not None and child.state == "PENDING_APPROVAL"


def _stalled(view: Any, children: Sequence[Any]) -> str | None:
    """Why the personalization cannot go on right now (a service down), as a sentence; else None.

    Only the error's code is shown: the full text is for the server's log.
    """
    stuck = [view] + ([_child(children, view.context["certificates"][view.context["current"]])]
                      if view.state == "ISSUING" else [])
    for wf in stuck:
        if wf is not None and wf.proc_state in ("retry", "exception"):
            code = (wf.last_error or "error").split(":", 1)[0]
            attempts = int(wf.retry_count or 0)
            if wf.proc_state == "retry":
                return (f"A service the server needs is not reachable right now ({code}, attempt {attempts}); "
                        "it retries by itself.")
            return (f"The server stopped a step after {attempts} attempt{'s' if attempts != 1 else ''} ({code}); "
                    "ask your PKI operator to retry it.")
    return None


def _failure(view: Any) -> tuple[str, str]:
    failure = view.context.get("failure") or {}
    return failure.get("code", "personalization.failed"), failure.get("message") or view.last_error or view.state


def agent_task(view: Any, children: Sequence[Any] = ()) -> dict[str, Any]:
    """The JSON task ``GET /api/v1/task`` answers."""
    ctx, state = view.context, view.state
    stalled = _stalled(view, children)
    if stalled is not None:
        return {"task": "wait", "reason": stalled, "retry_after": 10}
    if state == "WAIT_FOR_TOKEN":
        return {"task": "wait", "reason": "report the card first (POST /api/v1/token)", "retry_after": 1}
    if state == "CONFIRM_TOKEN":
        return dict(CONFIRM_CARD_TASK)
    if state == "WAIT_FOR_CSR":
        entry, index, count = _position(ctx)
        task = {"task": "generate_key", "cert_type": entry["type"], "index": index, "count": count,
                "key": entry["key"], "key_id": entry["key_id"], "label": entry["label"], "usage": entry["usage"]}
        if entry.get("require_attestation"):
            # A card that cannot attest reports it (/unable) before making a key in vain.
            task["attestation"] = "required"
        return task
    if state == "ISSUING":
        entry, _, _ = _position(ctx)
        reason = ("waiting for approval by an RA Operator" if _child_waits_for_approval(children, entry)
                  else "the CA is issuing the certificate")
        return {"task": "wait", "reason": reason, "retry_after": 2}
    if state == "WAIT_FOR_INSTALL":
        entry, index, count = _position(ctx)
        task = {"task": "install_certificate", "cert_type": entry["type"], "index": index, "count": count,
                "key_id": entry.get("key_id_used", entry["key_id"]), "label": entry["label"],
                "certificate": entry["certificate_pem"], "serial": entry["serial"]}
        if entry.get("escrow_id") is not None:
            from ..escrow.personalization import import_task

            return import_task(entry, task)
        return task
    if state == "SUCCESS":
        return {"task": "done", "certificates": [
            {"cert_type": e["type"], "serial": e["serial"], "status": e["status"]} for e in ctx["certificates"]
            if e["status"] != "skipped"
        ], "skipped": [{"cert_type": e["type"], "reason": e.get("reason", ""),
                        "skip_reason": e.get("skip_reason", "")}
                       for e in ctx["certificates"] if e["status"] == "skipped"]}
    if state in FINAL_FAILURE:
        code, message = _failure(view)
        return {"task": "failed", "code": code, "message": message}
    return {"task": "wait", "reason": "the server is working", "retry_after": 1}


def page_progress(view: Any, children: Sequence[Any] = ()) -> Progress:
    """The live page's phase, sentence and step list."""
    ctx, state = view.context, view.state
    token = ctx.get("token")
    if state in FINAL_FAILURE:
        plan = _plan_steps(ctx) if "certificates" not in ctx else []
        return Progress("failed", _failure(view)[1], _steps(ctx, state, children), token, plan)
    stalled = _stalled(view, children)
    if stalled is not None:
        return Progress("working", stalled, _steps(ctx, state, children) if "certificates" in ctx else [], token)
    if state in ("LOOKUP", "WAIT_FOR_TOKEN"):
        return Progress("waiting_for_card", "Insert your card and run the token agent with the code below.",
                        [], token)
    if state == "CONFIRM_TOKEN":
        plan = _plan_steps(ctx)
        if plan and all(step.status == "skipped" for step in plan):
            return Progress("confirm_card", "The agent found a card, but it cannot hold any of your certificates: "
                            "use another card (answer No), or confirm to end the personalization.", [], token, plan)
        return Progress("confirm_card", "The agent found a card. Is this your card?", [], token, plan)
    if state == "SUCCESS":
        skipped = [e["type"] for e in ctx.get("certificates") or [] if e["status"] == "skipped"]
        if skipped:
            return Progress("done", "Your card is ready, without: " + ", ".join(skipped)
                            + " (this card cannot hold it; see below).", _steps(ctx, state, children), token)
        return Progress("done", "Your card is ready.", _steps(ctx, state, children), token)
    steps = _steps(ctx, state, children) if "certificates" in ctx else []
    if state == "ISSUING" and _child_waits_for_approval(children, ctx["certificates"][ctx["current"]]):
        return Progress("approval", "Waiting for approval by an RA Operator.", steps, token)
    return Progress("working", "Personalizing your card. Keep it inserted.", steps, token)


def _steps(ctx: dict[str, Any], state: str, children: Sequence[Any]) -> list[Step]:
    entries = ctx.get("certificates") or []
    todo = _to_issue(entries)
    steps: list[Step] = []
    for number, entry in enumerate(todo, start=1):
        name = f"{entry['type']} ({number}/{len(todo)})"
        status = entry["status"]
        current = entries.index(entry) == ctx.get("current")
        key_done = status in ("requested", "issued", "installed")
        where = "on the server, escrowed" if entry.get("key_origin") == "escrowed" else "on the card"
        steps.append(Step(f"Generating key {name} {where}",
                          "done" if key_done else ("active" if current and state in ("WAIT_FOR_CSR", "ESCROW_KEY") else
                                                   "failed" if status == "failed" else "waiting")))
        steps.append(Step(f"Issuing certificate {name}",
                          "done" if status in ("issued", "installed") else
                          "failed" if status == "failed" else
                          "active" if current and state == "ISSUING" else "waiting"))
        steps.append(Step(f"Installing certificate {name}",
                          "done" if status == "installed" else
                          "active" if current and state == "WAIT_FOR_INSTALL" else "waiting"))
    for entry in entries:
        if entry["status"] == "kept":
            steps.append(Step(f"Keeping the valid {entry['type']} certificate {entry['serial']}", "done"))
        elif entry["status"] == "skipped":
            steps.append(Step(f"Not on this card: {entry['type']}: {entry.get('reason', '')}", "skipped"))
    return steps
