"""Activities, conditions and validators the test definitions name.

``issue`` stands for certificate issuance: its effect is one audit row
(event ``test.issue``) in the action's transaction, so a test can count
how often it really committed.  Hooks for the crash and offline tests:

- ``OXP_TEST_BLOCK_FILE``: while that file exists, ``issue`` touches
  ``OXP_TEST_REACHED_FILE`` and blocks (the worker is then killed);
- ``services.offline``: ``issue`` raises TokenError like an absent HSM;
- ``services.slow``: seconds ``issue`` and ``record_approval`` sleep.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from openxpki_py.audit import append_audit
from openxpki_py.errors import PolicyViolation, TokenNotFound
from openxpki_py.certificates.issuance import issue_certificate as shipped_issue_certificate
from openxpki_py.domains import load_definitions, shipped_registry
from openxpki_py.workflow import ActivityContext, DefinitionRegistry, Registry
from openxpki_py.workflow.errors import FieldRefused

DEFS_DIR = Path(__file__).with_name("defs")
# On top of the shipped callables, as a site's own would be; the shipped
# registry itself stays as the domains built it.
REGISTRY = Registry(parent=shipped_registry())


@dataclass
class TestServices:
    offline: bool = False
    slow: float = 0.0
    calls: list[str] = field(default_factory=list)

    __test__ = False  # not a pytest class


class FakeClock:
    """A clock the test moves by hand: backoff and wake times without sleeping."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@REGISTRY.validator("not_reserved")
def not_reserved(value: str, ctx: ActivityContext) -> None:
    if value == "admin":
        raise FieldRefused("'admin' is reserved", code="test.reserved")


@REGISTRY.condition("needs_approval")
def needs_approval(ctx: ActivityContext) -> bool:
    return bool(ctx.get("mode") == "approval")


@REGISTRY.condition("enough_approvals")
def enough_approvals(ctx: ActivityContext) -> bool:
    return len(ctx.get("approvals", [])) >= int(ctx.get("approvals_required", 1))


@REGISTRY.activity("note_request")
def note_request(ctx: ActivityContext) -> None:
    if ctx["subject"] == "forbidden":
        raise PolicyViolation("subject 'forbidden' is not allowed", code="test.subject")
    ctx.set_attribute("subject", ctx["subject"])
    ctx.add_attribute("tag", "checked")
    ctx["checked"] = True


@REGISTRY.activity("count_approval")
def count_approval(ctx: ActivityContext) -> None:
    _slow(ctx)
    approvals = list(ctx.get("approvals", []))
    if ctx.actor in approvals:
        raise PolicyViolation(f"{ctx.actor} has approved already; a second person must approve",
                              code="approval.same_person")
    approvals.append(ctx.actor)
    ctx["approvals"] = approvals
    ctx.note = ctx.inputs.get("comment")


@REGISTRY.activity("explode")
def explode(ctx: ActivityContext) -> None:
    ctx["half_done"] = True
    raise RuntimeError("the activity broke")


@REGISTRY.activity("issue")
def issue(ctx: ActivityContext) -> None:
    services = ctx.services
    if services is not None:
        services.calls.append(f"issue:{ctx.workflow_id}")
        if services.offline:
            raise TokenNotFound("no token with label 'ca' is present (test: CA offline)")
    append_audit(ctx.conn, actor=ctx.actor, event="test.issue", target=f"workflow:{ctx.workflow_id}")
    _block_if_asked()
    _slow(ctx)
    ctx["issued"] = True
    ctx.add_attribute("serial", f"s{ctx.workflow_id}")


@REGISTRY.activity("fork_children")
def fork_children(ctx: ActivityContext) -> None:
    ctx["child_ids"] = [
        ctx.fork("test_child", {"mode": mode, "subject": f"child {i}"}) for i, mode in enumerate(ctx["children"])
    ]


@REGISTRY.activity("collect_children")
def collect_children(ctx: ActivityContext) -> None:
    ctx["results"] = {str(c.id): c.state for c in ctx.children()}


@REGISTRY.activity("use_pin")
def use_pin(ctx: ActivityContext) -> None:
    pin = ctx.inputs["pin"]
    if ctx.get("leak"):
        ctx["copy"] = {"nested": [pin]}
    ctx["unlocked"] = True


@REGISTRY.activity("fork_issuance")
def fork_issuance(ctx: ActivityContext) -> None:
    for profile, csr in sorted(ctx["csrs"].items()):
        ctx.fork("certificate_issuance", {"csr": csr, "profile": profile, "subject": ctx["subject"],
                                          "owner": ctx.creator})


@REGISTRY.activity("collect_certificates")
def collect_certificates(ctx: ActivityContext) -> None:
    ctx["serials"] = {c.context["profile"]: c.context.get("certificate_serial") for c in ctx.children()}
    ctx["failures"] = {c.context["profile"]: c.last_error for c in ctx.children() if not c.succeeded}


@REGISTRY.activity("issue_certificate", override=True)
def issue_certificate_with_hook(ctx: ActivityContext) -> None:
    """The shipped issuance, then the crash hook: the certificate is stored, not yet committed."""
    shipped_issue_certificate(ctx)
    _block_if_asked()


def _slow(ctx: ActivityContext) -> None:
    delay = getattr(ctx.services, "slow", 0) or float(os.environ.get("OXP_TEST_SLOW", "0"))
    if delay:
        time.sleep(delay)


def _block_if_asked() -> None:
    block = os.environ.get("OXP_TEST_BLOCK_FILE")
    if not block or not Path(block).exists():
        return
    Path(os.environ["OXP_TEST_REACHED_FILE"]).touch()
    while Path(block).exists():
        time.sleep(0.05)


def load_test_definitions(*, include_shipped: bool = False) -> DefinitionRegistry:
    """The test definitions, after the shipped domains' ones when ``include_shipped``."""
    return load_definitions([DEFS_DIR], registry=REGISTRY, include_shipped=include_shipped)
