"""The pages.  Each view is registered with its URL rule and who may open it.

``access`` is ``public`` (no identity needed: static files), ``identity``
(an SSO user, no role yet: the role choice) or ``role`` (a granted role,
optionally one of ``roles``).  Views raise :mod:`.errors` exceptions and
never build error pages themselves.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from werkzeug.routing import IntegerConverter, Map, Rule
from werkzeug.security import safe_join
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ..audit import recent_audit
from ..audit.pending import chain_pending
from ..errors import NotFound as RecordNotFound
from . import errors
from .context import RequestContext
from .menu import OPERATOR_ROLES

if TYPE_CHECKING:
    from .app import WebApp

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

ViewFunc = Callable[..., Response]


@dataclass(frozen=True)
class View:
    func: ViewFunc
    rule: str
    methods: tuple[str, ...]
    access: str  # public | identity | role
    roles: frozenset[str] | None
    needs: str | None  # an attribute of WebApp that is None when the feature is absent

    def available(self, app: WebApp) -> bool:
        return self.needs is None or getattr(app, self.needs, None) is not None


VIEWS: dict[str, View] = {}


def view(rule: str, *, methods: tuple[str, ...] = ("GET",), access: str = "role",
         roles: frozenset[str] | None = None, needs: str | None = None) -> Callable[[ViewFunc], ViewFunc]:
    def register(func: ViewFunc) -> ViewFunc:
        VIEWS[func.__name__.removesuffix("_view")] = View(func, rule, methods, access, roles, needs)
        return func
    return register


def url_rules() -> list[Rule]:
    return [Rule(v.rule, endpoint=name, methods=list(v.methods)) for name, v in VIEWS.items()]


# Ids are BIGINT columns: a larger number names no record, and handed to the
# driver it fails as an overflow instead of "not found".
MAX_ROW_ID = 2**63 - 1


class RowIdConverter(IntegerConverter):
    """``<int:…>`` in every page rule: 0 … 2^63-1; anything else does not match (404)."""

    def __init__(self, map: Map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002 - Werkzeug's names
                 max: int | None = MAX_ROW_ID, signed: bool = False) -> None:
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


def url_map() -> Map:
    """The pages' URL map; ``int`` is bounded to database ids (:class:`RowIdConverter`)."""
    return Map(url_rules(), strict_slashes=False, converters={"int": RowIdConverter})


def safe_next(target: str | None) -> str | None:
    """An in-application path to continue to, or None: never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(ch) < 0x20 for ch in target):
        return None
    return target


# --- pages ---------------------------------------------------------------------

@view("/")
def home(ctx: RequestContext) -> Response:
    return ctx.render("home.mako")


@view("/login", methods=("GET", "POST"), access="identity")
def login(ctx: RequestContext) -> Response:
    """Role choice: offered roles, one button each; picking one runs its handler."""
    app, req = ctx.app, ctx.request
    next_path = safe_next(req.values.get("next"))
    offered = app.auth.roles_for(ctx.login, ctx.groups)
    if req.method == "POST":
        app.choose_role(ctx, req.form.get("role", ""))
        return _continue(ctx, next_path)
    if ctx.role is None and len(offered) == 1:
        app.choose_role(ctx, offered[0].role)
        return _continue(ctx, next_path)
    return ctx.render("login.mako", offered=[h.role for h in offered], next_path=next_path or "",
                      hide_menu=ctx.role is None)


def _continue(ctx: RequestContext, next_path: str | None) -> Response:
    script_root = ctx.request.script_root
    return redirect(script_root + next_path if next_path else ctx.url_for("home"), code=303)


@view("/logout", methods=("POST",), access="identity")
def logout(ctx: RequestContext) -> Response:
    ctx.app.end_session(ctx)
    return ctx.render("logout.mako", hide_menu=True, sso_logout_url=ctx.app.auth.sso.logout_url)


@view("/deeplink", access="identity", needs="deep_link_workflows")
def deep_link(ctx: RequestContext) -> Response:
    """Apache rewrites /token here: take the deep link's role, start its workflow, show it without menu."""
    app = ctx.app
    assert app.deep_link_workflows is not None
    cfg = app.web.deep_link
    if ctx.role != cfg.role:
        app.choose_role(ctx, cfg.role)
    if app.personalization is not None and cfg.workflow == app.personalization_type:
        wf = app.personalization.open_or_start(ctx.login)  # resume an unfinished one
    else:
        wf = app.deep_link_workflows.start(cfg.workflow, actor=ctx.login, role=cfg.role)
    # Redirect, so that reloading the result does not start yet another workflow.
    return redirect(ctx.url_for("deep_link_workflow", wf_id=wf.id), code=303)


@view("/deeplink/workflow/<int:wf_id>", needs="deep_link_workflows")
def deep_link_workflow(ctx: RequestContext, wf_id: int) -> Response:
    app = ctx.app
    assert app.deep_link_workflows is not None
    try:
        wf = app.deep_link_workflows.get(wf_id)
    except RecordNotFound:
        raise errors.PageNotFound() from None
    if wf.creator != ctx.login:  # someone else's workflow: do not even confirm it exists
        raise errors.PageNotFound()
    if app.personalization is not None and wf.wf_type == app.personalization_type:
        from .personalization import render_personalization

        return render_personalization(ctx, app.personalization.own(wf_id, ctx.login), deep_link=True)
    return ctx.render("workflow.mako", workflow=wf, hide_menu=True)


@view("/audit", roles=OPERATOR_ROLES)
def audit_log_view(ctx: RequestContext) -> Response:
    chain_pending(ctx.app.db, only_if_any=True)  # rows other nodes committed a moment ago are shown too
    with ctx.app.db.connect() as conn:
        rows = recent_audit(conn, limit=200)
    return ctx.render("audit.mako", rows=rows, message=ctx.take_flash())


@view("/audit/verify", methods=("POST",), roles=OPERATOR_ROLES)
def audit_verify(ctx: RequestContext) -> Response:
    """Check the whole chain (and the signed checkpoints, where configured) on request.

    Reading every row is not for each page view; ``openxpki-py audit verify``
    does the same from cron or monitoring.
    """
    report = ctx.app.verify_audit()
    problem = report.first_problem
    if problem is None:
        text = f"Audit chain intact: {report.rows} rows"
        if report.checkpoints:
            text += (f", {len(report.checkpoints)} signed checkpoints; {report.unanchored_rows} rows newer than "
                     "the last checkpoint")
        else:
            text += " (no signed checkpoints are configured: truncation and re-hashing cannot be detected)"
        ctx.flash(text + ".")
    else:
        ctx.flash(f"AUDIT CHAIN BROKEN: {problem.line()} ({len(report.problems)} problem(s) in all); "
                  "run openxpki-py audit verify for the full list.")
    # The console's searchable log (web/console/audit.py) where it exists, else the plain list.
    back = "console_audit" if "console_audit" in ctx.app.available else "audit_log"
    return redirect(ctx.url_for(back), code=303)


@view("/static/<path:filename>", access="public")
def static(ctx: RequestContext, filename: str) -> Response:
    path = safe_join(str(STATIC_DIR), filename)
    if path is None or not Path(path).is_file():
        raise errors.PageNotFound()
    mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    response = Response(Path(path).read_bytes(), mimetype=mimetype)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


