"""Search and the result pages: a person, a card, a workflow (``/console/search``, ``/console/people/…``)."""

from __future__ import annotations

from typing import Any

from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ...console import cards as card_states
from ...console import policy, search, stuck
from ...errors import NotFound
from ..context import RequestContext
from ..views import view
from .common import OPERATORS, checked_name, checked_serial, json_answer, query_text, services, wants_json


def _rows(rows: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]


@view("/console/search", roles=OPERATORS, needs="console")
def console_search(ctx: RequestContext) -> Response:
    """One box: a person (login, name, mail), a card serial, a certificate serial, a workflow id or state."""
    svc = services(ctx)
    text = query_text(ctx, "q")
    kind = ctx.request.args.get("kind", "person")
    number = search.page_number(ctx.request.args.get("page"))
    people: list[search.PersonHit] = []
    workflows: search.Page[Any] | None = None
    if text and kind == "card":
        return _go(ctx, "console_card", serial=search.find_card(svc.db, text)["serial"])
    if text and kind == "certificate":
        return _go(ctx, "console_certificate", serial=checked_serial(text))
    if text and kind == "workflow":
        if text.isdigit():
            return _go(ctx, "console_workflow", wf_id=int(text))
        workflows = search.find_workflows(svc.db, **_state_filter(text), number=number)
    elif text:
        people = search.find_people(svc.db, svc.directory, text)
    if wants_json(ctx):
        return json_answer({"people": [p.__dict__ for p in people],
                            "workflows": _rows(workflows.items) if workflows else [],
                            "has_next": bool(workflows and workflows.has_next)})
    return ctx.render("console/search.mako", q=text, kind=kind, people=people, workflows=workflows,
                      kinds=search.KINDS, message=ctx.take_flash())


def _state_filter(text: str) -> dict[str, str]:
    """``exception`` and the other processing states are proc_state; anything else is a state name."""
    lowered = text.lower()
    if lowered in ("running", "manual", "waiting", "retry", "exception", "finished", "failed"):
        return {"proc_state": lowered}
    return {"state": text.upper()}


def _go(ctx: RequestContext, endpoint: str, **values: Any) -> Response:
    target = ctx.url_for(endpoint, **values)
    if wants_json(ctx):
        target += "?format=json"
    return redirect(target, code=303)


@view("/console/people/<login>", roles=OPERATORS, needs="console")
def console_person(ctx: RequestContext, login: str) -> Response:
    login = checked_name(login, "person")
    svc = services(ctx)
    entry = search.person_entry(svc.directory, login)
    cards = search.cards_of(svc.db, login)
    certs = search.certificates_of(svc.db, login, search.page_number(ctx.request.args.get("cpage")))
    flows = search.workflows_of(svc.db, login, search.page_number(ctx.request.args.get("wpage")))
    if entry is None and not cards and not certs.items and not flows.items:
        raise NotFound(f"nobody called {login[:64]!r} is known to the directory or the PKI")
    if wants_json(ctx):
        return json_answer({"login": login, "name": entry.get("cn") if entry else None,
                            "mail": entry.get("mail") if entry else None, "in_directory": entry is not None,
                            "cards": _rows(cards), "certificates": _rows(certs.items),
                            "workflows": _rows(flows.items)})
    return ctx.render("console/person.mako", login=login, entry=entry, cards=cards, certs=certs, flows=flows,
                      may_card=policy.may(ctx.role, "token.status"), message=ctx.take_flash())


@view("/console/cards/<serial>", roles=OPERATORS, needs="console")
def console_card(ctx: RequestContext, serial: str) -> Response:
    serial = checked_name(serial, "card")
    svc = services(ctx)
    card = search.find_card(svc.db, serial)
    certs = search.card_certificates(svc.db, int(card["id"]))
    history = search.card_history(svc.db, card["serial"])
    flows = search.card_workflows(svc.db, card["serial"])
    if wants_json(ctx):
        return json_answer({"card": dict(card), "certificates": _rows(certs), "history": _rows(history),
                            "workflows": _rows(flows), "links": search.card_links(svc.db, card)})
    return ctx.render("console/card.mako", card=card, certs=certs, history=history, flows=flows,
                      transitions=card_states.available(svc.config.cards.lifecycle, card, ctx.role,
                                                        own_card=card["owner"] == ctx.login),
                      links=search.card_links(svc.db, card), message=ctx.take_flash(),
                      may_unblock="console_card_unblock" in ctx.app.available and card["status"] == "active"
                      and bool(card["owner"]))


@view("/console/workflows/<int:wf_id>", roles=OPERATORS, needs="console")
def console_workflow(ctx: RequestContext, wf_id: int) -> Response:
    wf = services(ctx).workflows.get(wf_id)
    context = stuck.shown_context(wf)
    if wants_json(ctx):
        data = wf.as_json()
        data["context"] = context
        return json_answer(data)
    return ctx.render("console/workflow.mako", wf=wf, wf_context=context, message=ctx.take_flash(),
                      may_retry=policy.may(ctx.role, "workflow.retry") and wf.proc_state in ("exception", "retry"),
                      may_fail=policy.may(ctx.role, "workflow.fail") and not wf.final)
