"""``openxpki-py console …``: the console's searches and exports for scripts and the server's shell.

The command line acts as CA Operator, like ``openxpki-py ca …`` (it runs on
the server, as the service's user).  Revocation, holds and CRLs are
``ca revoke / release-hold / crl / crl-info``; retry and fail are
``workflow retry / fail``: the same services as the pages.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import roles


def register(subparsers: Any) -> None:
    console = subparsers.add_parser("console", help="the operators' console: search, stuck work, audit export")
    sub = console.add_subparsers(dest="sub", required=True)

    def leaf(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = leaf("search", cmd_search, "find people (login, name, mail) or show a person's cards, certificates, workflows")
    p.add_argument("text")
    p.add_argument("--person", action="store_true", help="TEXT is a login: show that person's records")
    p = leaf("card", cmd_card, "move a card to another state: a transition of the card lifecycle (suspend, "
                               "resume, forgotten, returned, lost, damaged, retire, terminate, or the site's own)")
    p.add_argument("serial")
    p.add_argument("transition", help="the transition's name in the lifecycle (cards.lifecycle in config.yaml)")
    p.add_argument("--comment", help="why (kept in the audit trail)")
    leaf("forgotten", cmd_forgotten, "cards forgotten at home (certificates on hold), their temporary cards, and "
                                      "which ran out without the card coming back (JSON)")
    p = leaf("stuck", cmd_stuck, "workflows in exception or past their deadline with an error (JSON)")
    p.add_argument("--page", type=int, default=1)
    p = leaf("audit-export", cmd_audit_export, "the audit trail as CSV or JSON Lines on stdout")
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    p.add_argument("--who", help="only this actor (login)")
    for name in ("event", "target", "outcome", "since", "until"):
        p.add_argument(f"--{name}")


def _services(args: argparse.Namespace) -> Any:
    from ..config import load_config
    from ..services import Services

    return Services(load_config(args.config))


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_search(args: argparse.Namespace) -> int:
    from . import search

    services = _services(args)
    if not args.person:
        _print([hit.__dict__ for hit in search.find_people(services.db, services.directory, args.text)])
        return 0
    _print({"login": args.text,
            "cards": [dict(r) for r in search.cards_of(services.db, args.text)],
            "certificates": [dict(r) for r in search.certificates_of(services.db, args.text).items],
            "workflows": [dict(r) for r in search.workflows_of(services.db, args.text).items]})
    return 0


def cmd_card(args: argparse.Namespace) -> int:
    from .cards import transition

    services = _services(args)
    result = transition(services.db, services.ca, services.config.cards.lifecycle, args.serial, args.transition,
                        actor=args.actor,
                        role=roles.CA_OPERATOR, workflows=services.workflows, comment=args.comment)
    print(result.summary())
    return 0


def cmd_forgotten(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from ..personalization.temporary import forgotten_cards

    services = _services(args)
    with services.db.connect() as conn:
        _print(forgotten_cards(conn, services.config.cards, datetime.now(timezone.utc)))
    return 0


def cmd_stuck(args: argparse.Namespace) -> int:
    from .stuck import stuck_workflows

    page = stuck_workflows(_services(args).db, max(args.page, 1))
    _print({"workflows": [dict(r) for r in page.items], "has_next": page.has_next})
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    from .auditlog import AuditFilter, export

    values = {k: getattr(args, k) or "" for k in ("event", "target", "outcome", "since", "until")}
    flt = AuditFilter.from_args({**values, "actor": args.who or ""})
    for chunk in export(_services(args).db, flt, args.format, actor=args.actor, role=roles.CA_OPERATOR):
        sys.stdout.write(chunk)
    return 0
