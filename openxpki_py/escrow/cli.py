"""``openxpki-py escrow …``: the key-recovery key, escrow records, recovery under dual control.

```sh
openxpki-py escrow init-key                     # the AES key in the HSM (ca init does it when a type is escrowed)
openxpki-py escrow status                       # where the key is and its protection flags
openxpki-py escrow list --owner alice           # a person's key history (no key material)
openxpki-py --actor carol escrow recover 7 --reason "card lost, ticket 4711"   # starts key_recovery
openxpki-py --actor dave  escrow approve 42     # first approval
openxpki-py --actor erin  escrow approve 42     # second, by a different person
openxpki-py --actor dave  escrow release 42     # alice may now collect it on "My certificates"
openxpki-py --actor erin  escrow withdraw 42 --reason "ticket 4711 closed"   # taken back before she collects it
```

The officers never see the key: ``release`` hands the recovery to the key's
owner, who collects the PKCS#12 and its one-time password in their own web
session (there is no owner CLI: the SSO login is the owner's identity).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Any

from ..errors import ConfigError


def register(subparsers: Any) -> None:
    esc = subparsers.add_parser("escrow", help="escrowed encryption keys: key-recovery key, records, recovery")
    sub = esc.add_subparsers(dest="escrow_command", required=True, metavar="COMMAND")

    def leaf(name: str, help_text: str, handler: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=partial(_with_services, handler))
        return p

    leaf("init-key", "create the key-recovery key (AES-256) in the HSM; never replaces one", cmd_init_key)
    leaf("status", "where the key-recovery key is, and its protection flags", cmd_status)
    p = leaf("list", "a person's escrowed keys (key history), newest first; no key material", cmd_list)
    p.add_argument("--owner", required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = leaf("recover", "ask for the release of an escrowed key (starts a key_recovery workflow)", cmd_recover)
    p.add_argument("escrow_id", type=int, metavar="ESCROW_ID")
    p.add_argument("--reason", required=True, help="why (card lost, ticket number …); recorded and audited")
    p = leaf("approve", "approve a recovery (two different Key Recovery Officers are needed)", cmd_approve)
    p.add_argument("workflow_id", type=int, metavar="WORKFLOW_ID")
    p.add_argument("--comment")
    p = leaf("release", "release an approved recovery to the key's owner, who collects it on the web", cmd_release)
    p.add_argument("workflow_id", type=int, metavar="WORKFLOW_ID")
    p = leaf("withdraw", "withdraw a release the owner has not collected yet", cmd_withdraw)
    p.add_argument("workflow_id", type=int, metavar="WORKFLOW_ID")
    p.add_argument("--reason", required=True, help="why (recorded and audited)")


def _with_services(command: Any, args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..services import Services

    services = Services(load_config(getattr(args, "config", None)))
    try:
        return int(command(args, services))
    finally:
        services.close()


def _actor(args: argparse.Namespace) -> str:
    from ..workflow.cli import _actor as workflow_actor

    return workflow_actor(args)


def _escrow(services: Any) -> Any:
    if services.escrow is None:
        raise ConfigError("escrow.key: no key-recovery key is configured (and the CA key is not in an HSM)")
    return services.escrow


def init_escrow_key(services: Any, *, only_if_needed: bool = False) -> bool:
    """Create the key-recovery key if it is missing; ``only_if_needed``: only when a type is escrowed."""
    escrow = services.escrow
    if escrow is None:
        if only_if_needed:
            return False
        _escrow(services)
    if only_if_needed and not any(t.key_origin == "escrowed" for t in services.config.personalization.certificates):
        return False
    if escrow.custodian.key_exists():
        return False
    escrow.custodian.create_key()
    return True


def cmd_init_key(args: argparse.Namespace, services: Any) -> int:
    created = init_escrow_key(services)
    custodian = _escrow(services).custodian
    print(f"key-recovery key {'created' if created else 'exists already'}: {custodian.describe()}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace, services: Any) -> int:
    custodian = _escrow(services).custodian
    print(custodian.describe())
    for name, value in custodian.protection().items():
        print(f"  {name}: {value}")
    return 0


def cmd_list(args: argparse.Namespace, services: Any) -> int:
    escrow = _escrow(services)
    with services.db.connect() as conn:
        records = escrow.history(conn, args.owner)
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return 0
    for r in records:
        print(f"{r['id']:>6}  {r['cert_type']:<14} {r['key_spec']:<9} {r['status']:<10} "
              f"cert {r['certificate_serial'] or '-'}  created {r['created_at']:%Y-%m-%d %H:%M}")
    return 0


def cmd_recover(args: argparse.Namespace, services: Any) -> int:
    from .recovery import request_recovery

    view = request_recovery(services.workflows, args.escrow_id, reason=args.reason, actor=_actor(args))
    print(f"recovery workflow {view.id}: {view.state}")
    return 0 if view.state == "PENDING_APPROVAL" else 11


def cmd_approve(args: argparse.Namespace, services: Any) -> int:
    from .recovery import approve_recovery

    view = approve_recovery(services.workflows, args.workflow_id, actor=_actor(args), comment=args.comment)
    approvals = len(view.context.get("approvals", []))
    print(f"recovery workflow {view.id}: {view.state} ({approvals} of "
          f"{view.context.get('approvals_required', 2)} approvals)")
    return 0


def cmd_release(args: argparse.Namespace, services: Any) -> int:
    from .recovery import release_recovered_key

    view = release_recovered_key(services.workflows, args.workflow_id, actor=_actor(args))
    until = f" until {view.wake_at:%Y-%m-%d %H:%M} UTC" if view.wake_at else ""
    print(f"recovery workflow {view.id}: {view.state}; {view.context['owner']} collects the key on "
          f"\"My certificates\"{until} (PKCS#12 and one-time password are shown to them only)")
    return 0


def cmd_withdraw(args: argparse.Namespace, services: Any) -> int:
    from .recovery import withdraw_recovery

    view = withdraw_recovery(services.workflows, args.workflow_id, actor=_actor(args), reason=args.reason)
    print(f"recovery workflow {view.id}: {view.state}; {view.context['owner']} can no longer collect the key")
    return 0
