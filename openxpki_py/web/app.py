"""The WSGI application: routing, identity, session, CSRF, and error pages.

Every request goes through :meth:`WebApp.dispatch` in the same order:
match the URL, establish the SSO identity (from the environ only), open the
session bound to that identity, check the CSRF token on state-changing
methods, make sure a role has been chosen, then call the view.  Errors of
any kind are turned into a page in :meth:`WebApp.error_response` only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from mako.lookup import TemplateLookup
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect
from werkzeug.utils import redirect
from werkzeug.wrappers import Response

from ..audit import ChainReport, append_audit, verify_chain
from ..audit.pending import chain_before_verify, chain_queued
from ..auth import identity as sso
from ..auth.config import AuthConfig, RoleHandler
from ..auth.handlers import HandlerOutcome, run_role_handler
from ..auth.person import UnknownPerson, resolve_person
from ..auth.sessions import SessionStore, WebSession
from ..db.engine import read_only
from ..errors import ConfigError, OpenXPKIError
from . import approvals as _approval_views  # noqa: F401 - registers its views
from . import console as _console_views  # noqa: F401 - registers its views
from .console.common import error_json, wants_json
from . import errors
from . import mine as _my_views  # noqa: F401 - registers its views
from . import ocsp as _ocsp_views  # noqa: F401 - registers its views
from . import personalization as _personalization_views  # noqa: F401 - registers its views
from . import recovered as _recovered_views  # noqa: F401 - registers its views
from . import unblock as _unblock_views  # noqa: F401 - registers its views
from .config import WebConfig
from .context import RequestContext, WebRequest
from .menu import menu_for
from .render import render, template_lookup
from .views import VIEWS, View, url_map
from .workflows import EngineGateway, WorkflowGateway

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from ..config import Config
    from ..services import Services

log = logging.getLogger(__name__)

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

# Pages never leave this origin, load no third-party code and are not framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

HandlerRunner = Callable[[RoleHandler, sso.Identity], HandlerOutcome]


class WebApp:
    """The openxpki-py web UI as a WSGI callable."""

    def __init__(
        self,
        *,
        instance_name: str,
        auth: AuthConfig,
        web: WebConfig,
        db: Engine,
        workflows: WorkflowGateway | None = None,
        personalization: Any = None,
        unblock: Any = None,
        api: Any = None,
        lookup: TemplateLookup | None = None,
        run_handler: HandlerRunner = run_role_handler,
        resolve_person: Callable[[str], object] | None = None,
        verify_audit: Callable[[], ChainReport] | None = None,
        ocsp: Callable[[bytes], bytes] | None = None,
        console: Services | None = None,
    ) -> None:
        if not auth.roles:
            raise ConfigError("auth.roles: no role is configured, so the web UI could grant none")
        if auth.reads_headers and not web.trusted_proxies.networks:
            raise ConfigError("auth.sso.header_sso / header_attributes: request headers count only from "
                              "web.trusted_proxies, and none is configured")
        # The deep link (and its menu entry) exists only once its workflow type
        # does: a feature not built yet is absent, not a dead link.
        self.deep_link_workflows: WorkflowGateway | None = None
        if workflows is not None and workflows.has_type(web.deep_link.workflow):
            if web.deep_link.role not in auth.roles:
                raise ConfigError(f"web.deep_link.role: {web.deep_link.role!r} is not one of auth.roles")
            self.deep_link_workflows = workflows
        elif workflows is not None:
            log.warning("web.deep_link.workflow: no workflow type %r is defined; /token is disabled",
                        web.deep_link.workflow)
        # The personalization pages and the agent's JSON API, present once the
        # smartcard_personalization workflow is (see web/personalization.py, web/api.py).
        self.personalization = personalization
        self.personalization_type = "smartcard_personalization"
        self.unblock = unblock  # PIN unblock pages (web/unblock.py); None without the pin_unblock workflow
        self.api = api
        self.instance_name = instance_name
        self.auth = auth
        self.web = web
        self.db = db
        self.workflows = workflows
        self.lookup = lookup or template_lookup()
        self.run_handler = run_handler
        # The SSO login → one directory entry (auth.person.resolve_person);
        # create_app always sets it, tests of other parts may leave it out.
        self.resolve_person = resolve_person
        self.verify_audit: Callable[[], ChainReport] = verify_audit or self._verify_chain_only
        self.ocsp = ocsp  # the responder's respond(DER request) -> DER response; None: no /ocsp
        # The operators' console (web/console/): the instance's services (CA, engine, directory).
        self.console = console
        self.sessions = SessionStore(idle_timeout=web.session.idle_timeout,
                                     absolute_timeout=web.session.absolute_timeout)
        self.url_map = url_map()
        # Endpoints whose feature exists in this instance; the menu shows no others.
        self.available = {name for name, view in VIEWS.items() if view.available(self)}

    # --- WSGI ---------------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            return self._respond(environ, start_response)
        finally:
            # The response is built, its transactions committed: chain the audit rows they
            # queued (PostgreSQL/Oracle), so audit_log is complete when the answer leaves.
            chain_queued()

    def _respond(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self.api is not None and environ.get("PATH_INFO", "").startswith("/api/"):
            # The token agent: no SSO session, no cookies, its own bearer credential.
            return self.api(environ, start_response)  # type: ignore[no-any-return]
        request = WebRequest(environ)
        ctx = RequestContext(self, request, self.url_map.bind_to_environ(environ))
        try:
            response = self.dispatch(ctx)
        except RequestRedirect as exc:
            response = exc.get_response(environ)
        except HTTPException as exc:
            response = self.error_response(ctx, exc)
        except OpenXPKIError as exc:  # mapped by the one table (web/errors.py), never a 500 page
            log.warning("%s %s: %s: %s", request.method, request.path, exc.code, exc.message)
            response = self.error_response(ctx, errors.http_error_for(exc))
        except SQLAlchemyError as exc:  # the database is lost or locked: 503 with Retry-After, not a 500
            log.warning("%s %s: database failed: %s", request.method, request.path, exc, exc_info=True)
            response = self.error_response(ctx, errors.MappedError(errors.database_answer(exc)))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = self.error_response(ctx, errors.ServerError())
        self._finish(ctx, response)
        return response(environ, start_response)

    def dispatch(self, ctx: RequestContext) -> Response:
        endpoint, args = ctx.adapter.match()
        view = VIEWS[endpoint]
        if not view.available(self):
            raise errors.PageNotFound()
        if view.access == "public":
            return view.func(ctx, **args)
        ctx.identity = self.identify(ctx.request)
        cookie = ctx.request.cookies.get(self.web.session.cookie_name)
        with read_only(self.db) as conn:
            ctx.session, change = self.sessions.current(conn, cookie, ctx.identity)
        if change:  # ends it, or notes that it is in use
            with self.db.begin() as conn:
                ctx.session = self.sessions.find(conn, cookie, ctx.identity)
        if ctx.session is None:
            # A new session only for a login that is one person, spelled as the
            # directory spells it (auth/person.py); looked up outside the
            # transaction, so a slow directory holds no database lock.
            self.admit(ctx.identity)
            with self.db.begin() as conn:
                ctx.session = self.sessions.create(conn, ctx.identity)
        if ctx.request.method in STATE_CHANGING:
            self.check_csrf(ctx)
        if view.access == "role":
            self.require_role(ctx, view)
        return view.func(ctx, **args)

    # --- identity, CSRF, roles ---------------------------------------------

    def _verify_chain_only(self) -> ChainReport:
        chained = chain_before_verify(self.db)
        with self.db.connect() as conn:
            report = verify_chain(conn)
        report.warnings.extend(chained)
        return report

    def admit(self, identity: sso.Identity) -> None:
        if self.resolve_person is None:
            return
        try:
            self.resolve_person(identity.login)
        except UnknownPerson as exc:
            log.warning("refused SSO login: %s", exc.message)
            with self.db.begin() as conn:
                append_audit(conn, actor=identity.login, event="auth.login.refused", details={"reason": exc.code})
            raise errors.PersonUnknown() from None

    def identify(self, request: WebRequest) -> sso.Identity:
        try:
            peer = str(request.environ.get("REMOTE_ADDR") or "")
            return sso.identity_from_environ(request.environ, self.auth.sso,
                                             from_trusted_proxy=self.web.trusted_proxies.trusts(peer))
        except sso.NotAuthenticated:
            raise errors.NotAuthenticated() from None
        except sso.InvalidLogin as exc:
            log.warning("refused SSO login: %s", exc.message)
            raise errors.LoginRefused() from None
        except sso.RealmRefused as exc:
            log.warning("refused SSO login: %s", exc.message)
            raise errors.RealmNotAccepted() from None

    def check_csrf(self, ctx: RequestContext) -> None:
        assert ctx.session is not None
        token = ctx.request.form.get(CSRF_FIELD) or ctx.request.headers.get(CSRF_HEADER)
        if not ctx.session.csrf_valid(token):
            log.warning("CSRF token %s on %s %s for %r", "wrong" if token else "missing",
                        ctx.request.method, ctx.request.path, ctx.login)
            raise errors.CSRFRejected()

    def require_role(self, ctx: RequestContext, view: View) -> None:
        assert ctx.session is not None
        if ctx.session.role is None:
            offered = self.auth.roles_for(ctx.login, ctx.groups)
            if len(offered) == 1 and ctx.request.method == "GET":
                self.choose_role(ctx, offered[0].role)  # one role: taken without asking
            else:
                # Remember where the user was going; the role choice continues there.
                raise _Redirect(ctx.url_for("login", next=self.app_path(ctx)))
        if view.roles is not None and ctx.session.role not in view.roles:
            raise errors.RoleRequired()

    def choose_role(self, ctx: RequestContext, role: str) -> None:
        """Run ``role``'s handler for the user; grant it to the session or raise RoleNotGranted."""
        assert ctx.identity is not None and ctx.session is not None
        handler = self.auth.roles.get(role)
        role = role[:64]  # from a form: fit the audit column whatever was posted
        if handler is None or not handler.offered_to(ctx.login, ctx.groups):
            outcome = HandlerOutcome(role, False, "role not offered to this user")
        else:
            # Outside any transaction: the command may take up to its timeout.
            outcome = self.run_handler(handler, ctx.identity)
        with self.db.begin() as conn:
            if outcome.granted:
                self.sessions.grant_role(conn, ctx.session, role)
            append_audit(conn, actor=ctx.login, event="auth.role.grant" if outcome.granted else "auth.role.refused",
                         outcome="ok" if outcome.granted else "refused", role=role,
                         details=outcome.audit_details())
        if not outcome.granted:
            raise errors.RoleNotGranted(role)

    def end_session(self, ctx: RequestContext) -> None:
        assert ctx.session is not None
        with self.db.begin() as conn:
            self.sessions.end(conn, ctx.session, actor=ctx.login, reason="logout")
        ctx.session = None

    # --- responses ----------------------------------------------------------

    @staticmethod
    def app_path(ctx: RequestContext) -> str:
        """This request's path inside the application (what ``next`` stores)."""
        query = ctx.request.query_string.decode("latin-1")
        return ctx.request.path + (f"?{query}" if query else "")

    def render_page(self, ctx: RequestContext, template: str, *, status: int = 200,
                    hide_menu: bool = False, **values: Any) -> Response:
        session: WebSession | None = ctx.session
        role = session.role if session is not None else None
        page = render(
            self.lookup, template,
            instance_name=self.instance_name,
            identity=ctx.identity,
            role=role,
            csrf_token=session.csrf_token if session is not None else "",
            menu=[] if hide_menu else menu_for(role, self.available),
            can_switch=ctx.identity is not None and len(self.auth.roles_for(ctx.identity.login, ctx.identity.groups)) > 1,
            hide_menu=hide_menu,
            url_for=ctx.url_for,
            **values,
        )
        return Response(page, status=status, mimetype="text/html")

    def error_response(self, ctx: RequestContext, exc: HTTPException) -> Response:
        if isinstance(exc, _Redirect):
            return redirect(exc.location, code=303)
        code = exc.code or 500
        if ctx.request.path.startswith("/console") and wants_json(ctx):
            return error_json(exc)  # a script asked: it reads JSON, not a page
        try:
            error_code = exc.answer.code if isinstance(exc, errors.MappedError) else ""
            response = self.render_page(ctx, "error.mako", status=code, hide_menu=ctx.role is None,
                                        title=exc.name, message=exc.description or "", error_code=error_code)
        except Exception:  # the error page itself failed: fall back to Werkzeug's plain one
            log.exception("rendering the error page failed")
            response = exc.get_response()
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    def _finish(self, ctx: RequestContext, response: Response) -> None:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        cfg = self.web.session
        if ctx.session is not None and ctx.session.cookie is not None:
            # Path "/": Apache's /token rewrite lives outside the application's own prefix.
            response.set_cookie(cfg.cookie_name, ctx.session.cookie, path="/", secure=cfg.cookie_secure,
                                httponly=True, samesite="Strict")
        elif ctx.session is None and ctx.identity is not None and response.status_code < 500:
            # (not on a 5xx: the session could not be read, it still exists)
            response.delete_cookie(cfg.cookie_name, path="/", secure=cfg.cookie_secure,
                                   httponly=True, samesite="Strict")


class _Redirect(HTTPException):
    """A redirect raised from the middle of dispatch (e.g. "choose a role first")."""

    code = 303

    def __init__(self, location: str) -> None:
        super().__init__()
        self.location = location


def create_app(config: Config, services: Services | None = None) -> WebApp:
    """Build the web app from the instance config.

    ``services`` is the process's :class:`openxpki_py.services.Services`
    (built here when not given); the app uses its ``db`` and ``workflows``.
    The schema must exist already (``openxpki-py init``): several Apache
    processes racing to create tables is not something to do per request.
    """
    from ..db.engine import schema_present
    from ..errors import StorageError
    from ..services import Services  # noqa: F811 - the runtime import (the one above is for types)

    if services is None:
        services = Services(config)
    db = services.db
    if not schema_present(db):
        raise StorageError("the database has no openxpki-py tables yet: run `openxpki-py init` first")
    engine = services.workflows
    personalization = api = unblock = unblock_calls = None
    if "smartcard_personalization" in engine.definitions.definitions:
        from ..personalization.agent_calls import TokenAgentCalls
        from ..personalization.service import PersonalizationService
        from .api import AgentApi

        personalization = PersonalizationService(engine=engine, db=db, policy=config.personalization)
        calls = TokenAgentCalls(db=db, engine=engine, policy=config.personalization,
                                card_admin=lambda: services.card_admin,
                                max_card_admin_releases=config.card_admin.max_releases,
                                escrow=services.escrow)
        if "pin_unblock" in engine.definitions.definitions:
            from ..unblock.agent_calls import PinUnblockCalls
            from ..unblock.service import PinUnblockService

            unblock = PinUnblockService(engine=engine, db=db, limits=config.personalization.enrollment)
            unblock_calls = PinUnblockCalls(db=db, engine=engine, card_admin=lambda: services.card_admin)
        api = AgentApi(calls, unblock=unblock_calls,
                       sso_config=config.auth.sso, trusted_proxies=config.web.trusted_proxies)
    return WebApp(
        instance_name=config.instance.name,
        auth=config.auth,
        web=config.web,
        db=db,
        workflows=EngineGateway(engine),
        personalization=personalization,
        unblock=unblock,
        api=api,
        resolve_person=lambda login: resolve_person(services.directory, login),
        verify_audit=services.audit_checkpoints.verify if services.audit_checkpoints is not None else None,
        ocsp=_ocsp_responder(services),
        console=services,
    )


def _ocsp_responder(services: Services) -> Callable[[bytes], bytes] | None:
    """The responder's answer function, built on the first OCSP request (the HSM is opened then)."""
    if services.config.ca.ocsp is None:
        return None

    def respond(request: bytes) -> bytes:
        responder = services.ocsp
        assert responder is not None
        return responder.respond(request)
    return respond
