"""The web app in-process (Werkzeug test client): identity, roles, sessions, CSRF, escaping."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from werkzeug.test import Client, TestResponse

from openxpki_py.auth.config import AuthConfig, RoleHandler, SSOConfig
from openxpki_py.auth.handlers import HandlerOutcome
from openxpki_py.auth.identity import Identity
from openxpki_py.auth.sessions import utcnow
from openxpki_py.db.engine import create_schema, open_engine
from openxpki_py.db.schema import audit_log, web_session
from openxpki_py.errors import AuthError, ConfigError, NotPermitted, PolicyViolation, StorageError, UnexpectedStep
from openxpki_py.errors import NotFound as RecordNotFound
from openxpki_py.web.app import WebApp
from openxpki_py.web.client_address import TrustedProxies
from openxpki_py.web.config import DeepLinkConfig, SessionConfig, WebConfig
from openxpki_py.web.workflows import WorkflowSummary

BASE = "https://pki.test"


class FakeWorkflows:
    def __init__(self, types: tuple[str, ...] = ("smartcard_personalization",)) -> None:
        self.started: list[WorkflowSummary] = []
        self.types = types

    def has_type(self, wf_type: str) -> bool:
        return wf_type in self.types

    def start(self, wf_type: str, *, actor: str, role: str) -> WorkflowSummary:
        wf = WorkflowSummary(len(self.started) + 1, wf_type, "INITIAL", "manual", actor)
        self.started.append(wf)
        return wf

    def get(self, wf_id: int) -> WorkflowSummary:
        for wf in self.started:
            if wf.id == wf_id:
                return wf
        raise RecordNotFound(f"workflow {wf_id}")


class Grants:
    """Stands in for the external commands: who gets which role."""

    def __init__(self) -> None:
        self.allowed = {("alice", "User"), ("bob", "User"), ("bob", "RA Operator"), ("carol", "User")}
        self.calls: list[tuple[str, str]] = []

    def __call__(self, handler: RoleHandler, identity: Identity) -> HandlerOutcome:
        self.calls.append((identity.login, handler.role))
        ok = (identity.login, handler.role) in self.allowed
        return HandlerOutcome(handler.role, ok, "exit 0" if ok else "exit 1", 0 if ok else 1,
                              "" if ok else "not in group")


def _handler(role: str, users: list[str] | None = None) -> RoleHandler:
    return RoleHandler(role=role, command=("/bin/true",), users=frozenset(users) if users else None)


AUTH = AuthConfig(
    sso=SSOConfig(attributes={"display_name": "SSO_DISPLAY_NAME"}),
    roles={
        "User": _handler("User"),
        "RA Operator": _handler("RA Operator", ["alice", "bob"]),
        "CA Operator": _handler("CA Operator", ["alice", "bob"]),
    },
)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'web.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def grants() -> Grants:
    return Grants()


@pytest.fixture
def workflows() -> FakeWorkflows:
    return FakeWorkflows()


@pytest.fixture
def app(db: Engine, grants: Grants, workflows: FakeWorkflows) -> WebApp:
    return WebApp(instance_name="test-pki", auth=AUTH, web=WebConfig(), db=db, workflows=workflows,
                  run_handler=grants)


class SSOClient(Client):
    """A browser behind the SSO: ``sso`` is what the web server puts into the environ."""

    def __init__(self, app: WebApp, sso: dict[str, str]) -> None:
        super().__init__(app)
        self.sso = sso

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        kwargs.setdefault("base_url", BASE)
        kwargs["environ_overrides"] = {**self.sso, **kwargs.get("environ_overrides", {})}
        return super().open(*args, **kwargs)


def client(app: WebApp, user: str | None, **environ: str) -> SSOClient:
    return SSOClient(app, ({"REMOTE_USER": user} if user is not None else {}) | environ)


def get(c: Client, path: str, **kw: Any) -> TestResponse:
    return c.get(path, **kw)


def csrf(page: TestResponse) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert m, "page has no CSRF token"
    return m.group(1)


def choose(c: SSOClient, role: str, next_path: str | None = None) -> TestResponse:
    page = get(c, "/login")
    data = {"role": role, "csrf_token": csrf(page)}
    if next_path:
        data["next"] = next_path
    return c.post("/login", data=data)


def audit_rows(db: Engine) -> list[dict[str, object]]:
    with db.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.id)).mappings()]


# --- identity --------------------------------------------------------------------

def test_no_identity_is_401_saying_the_web_server_did_not_authenticate(app: WebApp) -> None:
    r = get(client(app, None), "/")
    assert r.status_code == 401
    assert "web server did not authenticate you" in r.get_data(as_text=True)
    assert "Set-Cookie" not in r.headers


@pytest.mark.parametrize("header", ["X-Remote-User", "Remote-User", "REMOTE_USER"])
def test_request_headers_are_never_identity(app: WebApp, header: str) -> None:
    r = get(client(app, None), "/", headers={header: "bob"})
    assert r.status_code == 401


def test_header_is_identity_only_when_configured(db: Engine, grants: Grants) -> None:
    auth = replace(AUTH, sso=SSOConfig(header_sso="X-Forwarded-User"))
    proxy = WebConfig(trusted_proxies=TrustedProxies.parse(["10.0.0.5"]))
    app = WebApp(instance_name="t", auth=auth, web=proxy, db=db, run_handler=grants)
    r = get(client(app, "alice", REMOTE_ADDR="10.0.0.5"), "/login", headers={"X-Forwarded-User": "carol"})
    assert r.status_code == 303  # carol has one role: taken without asking
    assert grants.calls == [("carol", "User")]
    # With header_sso, REMOTE_USER alone is not enough.
    assert get(client(app, "alice", REMOTE_ADDR="10.0.0.5"), "/").status_code == 401
    # The header from anyone but the proxy is not a login.
    assert get(client(app, None, REMOTE_ADDR="10.0.0.6"), "/", headers={"X-Forwarded-User": "carol"}).status_code == 401


def test_header_sso_without_trusted_proxies_is_a_config_error(db: Engine, grants: Grants) -> None:
    for sso in (SSOConfig(header_sso="X-Forwarded-User"), SSOConfig(header_attributes={"groups": "X-SSO-Groups"})):
        with pytest.raises(ConfigError, match="web.trusted_proxies"):
            WebApp(instance_name="t", auth=replace(AUTH, sso=sso), web=WebConfig(), db=db, run_handler=grants)


def test_login_with_control_characters_is_refused(app: WebApp) -> None:
    r = get(client(app, "alice\nFAKE LOG LINE"), "/")
    assert r.status_code == 403


# --- roles -----------------------------------------------------------------------

def test_several_roles_ask_and_the_choice_runs_the_handler(app: WebApp, grants: Grants, db: Engine) -> None:
    c = client(app, "alice")
    r = get(c, "/")
    assert r.status_code == 303 and r.headers["Location"].endswith("/login?next=/")
    page = get(c, "/login").get_data(as_text=True)
    for role in ("User", "RA Operator", "CA Operator"):
        assert f'value="{role}"' in page
    assert grants.calls == []
    r = choose(c, "User", "/")
    assert r.status_code == 303
    home = get(c, "/").get_data(as_text=True)
    assert "Personalize SmartCard" in home and "Audit log" not in home
    assert audit_rows(db)[-1]["event"] == "auth.role.grant"


def test_refused_role_is_audited_and_grants_nothing(app: WebApp, grants: Grants, db: Engine) -> None:
    c = client(app, "alice")
    choose(c, "User")
    r = choose(c, "RA Operator")
    assert r.status_code == 403
    body = r.get_data(as_text=True)
    assert "was not granted" in body and "not in group" not in body  # stderr stays out of the page
    row = audit_rows(db)[-1]
    assert (row["event"], row["outcome"], row["actor"], row["role_name"]) == (
        "auth.role.refused", "refused", "alice", "RA Operator")
    assert row["details"]["stderr"] == "not in group"  # type: ignore[index]
    home = get(c, "/").get_data(as_text=True)
    assert "Audit log" not in home and "role <strong class=\"role\">User</strong>" in home
    assert get(c, "/audit").status_code == 403


def test_operator_gets_operator_menu(app: WebApp) -> None:
    c = client(app, "bob")
    choose(c, "RA Operator")
    home = get(c, "/").get_data(as_text=True)
    assert "Audit log" in home and "Personalize SmartCard" not in home
    assert get(c, "/audit").status_code == 200


def test_role_not_offered_is_refused_without_running_anything(app: WebApp, grants: Grants) -> None:
    c = client(app, "carol")
    page = get(c, "/login")  # carol: one role, taken at once
    assert page.status_code == 303
    r = c.post("/login", data={"role": "CA Operator", "csrf_token": csrf(get(c, "/login"))})
    assert r.status_code == 403
    assert grants.calls == [("carol", "User")]


def test_single_role_is_taken_without_asking(app: WebApp, grants: Grants) -> None:
    r = get(client(app, "carol"), "/")
    assert r.status_code == 200 and "Personalize SmartCard" in r.get_data(as_text=True)
    assert "Switch role" not in r.get_data(as_text=True)


def test_switching_role_runs_the_handler_again(app: WebApp, grants: Grants) -> None:
    c = client(app, "bob")
    choose(c, "RA Operator")
    choose(c, "User")
    choose(c, "RA Operator")
    assert grants.calls == [("bob", "RA Operator"), ("bob", "User"), ("bob", "RA Operator")]


def test_deep_link_continues_after_role_choice(app: WebApp) -> None:
    c = client(app, "bob")
    r = get(c, "/audit?page=2")
    assert r.status_code == 303 and "next=/audit?page%3D2" in r.headers["Location"]
    r = choose(c, "RA Operator", "/audit?page=2")
    assert r.headers["Location"] == "/audit?page=2"


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "\\\\evil", "/x\r\nSet-Cookie: a=b"])
def test_next_never_leaves_the_application(app: WebApp, target: str) -> None:
    c = client(app, "bob")
    r = choose(c, "User", target)
    assert r.status_code == 303 and r.headers["Location"] == "/"


# --- CSRF and sessions -------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "wrong"])
def test_post_without_valid_csrf_token_is_403_and_changes_nothing(app: WebApp, grants: Grants,
                                                                  token: str | None, db: Engine) -> None:
    c = client(app, "bob")
    choose(c, "User")
    before = audit_rows(db)
    data = {"role": "RA Operator"} | ({"csrf_token": token} if token else {})
    r = c.post("/login", data=data)
    assert r.status_code == 403 and "security token" in r.get_data(as_text=True)
    assert grants.calls == [("bob", "User")]
    assert audit_rows(db) == before
    assert c.post("/logout", data=data).status_code == 403
    assert "role <strong class=\"role\">User</strong>" in get(c, "/").get_data(as_text=True)


def test_csrf_token_in_header_is_accepted(app: WebApp) -> None:
    c = client(app, "bob")
    choose(c, "User")
    token = csrf(get(c, "/"))
    r = c.post("/logout", headers={"X-CSRF-Token": token})
    assert r.status_code == 200 and "Session ended" in r.get_data(as_text=True)


def test_cookie_flags(app: WebApp) -> None:
    r = get(client(app, "bob"), "/login")
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("openxpki_session=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie


def test_role_grant_rotates_the_session_id(app: WebApp) -> None:
    c = client(app, "bob")
    get(c, "/login")
    before = c.get_cookie("openxpki_session", domain="pki.test")
    choose(c, "User")
    after = c.get_cookie("openxpki_session", domain="pki.test")
    assert before is not None and after is not None and before.value != after.value


def test_session_is_bound_to_the_sso_user(app: WebApp, db: Engine) -> None:
    c = client(app, "bob")
    choose(c, "RA Operator")
    assert get(c, "/audit").status_code == 200
    c.sso["REMOTE_USER"] = "alice"
    r = get(c, "/audit")
    assert r.status_code == 303 and "/login" in r.headers["Location"]  # a new login, not bob's role
    with db.connect() as conn:
        logins = [row.login for row in conn.execute(select(web_session))]
    assert logins == ["alice"]
    assert audit_rows(db)[-1]["details"] == {"reason": "sso_user_changed"}


def test_idle_and_absolute_timeouts(db: Engine, grants: Grants) -> None:
    web = WebConfig(session=SessionConfig(idle_timeout=timedelta(minutes=5), absolute_timeout=timedelta(minutes=60)))
    app = WebApp(instance_name="t", auth=AUTH, web=web, db=db, run_handler=grants)
    now = [utcnow()]
    app.sessions.clock = lambda: now[0]
    c = client(app, "bob")
    choose(c, "User")
    now[0] += timedelta(minutes=4)
    assert get(c, "/").status_code == 200
    now[0] += timedelta(minutes=6)
    assert get(c, "/").status_code == 303  # idle too long: back to the role choice
    choose(c, "User")
    for _ in range(15):  # busy, never idle for 5 minutes ...
        now[0] += timedelta(minutes=4)
        assert get(c, "/").status_code == 200
    now[0] += timedelta(minutes=4)
    assert get(c, "/").status_code == 303  # ... but older than an hour


# --- pages -------------------------------------------------------------------------

def test_display_name_is_escaped(app: WebApp) -> None:
    evil = '<script>alert("x")</script>'
    c = client(app, "alice", SSO_DISPLAY_NAME=evil)
    for path in ("/login", "/audit"):
        body = get(c, path).get_data(as_text=True)
        assert "<script>" not in body
    choose(c, "User")
    body = get(c, "/").get_data(as_text=True)
    assert "<script>" not in body and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in body


def test_deep_link_grants_user_starts_workflow_and_hides_menu(app: WebApp, workflows: FakeWorkflows,
                                                              grants: Grants) -> None:
    c = client(app, "alice")
    r = get(c, "/deeplink")
    assert r.status_code == 303 and r.headers["Location"] == "/deeplink/workflow/1"
    assert grants.calls == [("alice", "User")]
    assert workflows.started[0].wf_type == "smartcard_personalization"
    page = get(c, "/deeplink/workflow/1")
    body = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="workflow-id">1<' in body
    assert 'aria-label="Main menu"' not in body
    # Another user cannot see it.
    assert get(client(app, "carol"), "/deeplink/workflow/1").status_code == 404


@pytest.mark.parametrize("workflows", [None, FakeWorkflows(types=())])
def test_deep_link_absent_without_its_workflow(db: Engine, grants: Grants, workflows: FakeWorkflows | None) -> None:
    app = WebApp(instance_name="t", auth=AUTH, web=WebConfig(), db=db, workflows=workflows, run_handler=grants)
    c = client(app, "carol")
    assert get(c, "/deeplink").status_code == 404
    assert "Personalize SmartCard" not in get(c, "/").get_data(as_text=True)


def test_security_headers_and_static(app: WebApp) -> None:
    r = get(client(app, "bob"), "/login")
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["Cache-Control"] == "no-store"
    css = get(client(app, None), "/static/style.css")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert get(client(app, None), "/static/../app.py").status_code == 404


def test_unknown_page_is_404(app: WebApp) -> None:
    assert get(client(app, "bob"), "/nope").status_code == 404


def test_deep_link_role_must_exist(db: Engine) -> None:
    from openxpki_py.errors import ConfigError

    with pytest.raises(ConfigError, match="web.deep_link.role"):
        WebApp(instance_name="t", auth=AUTH, web=WebConfig(deep_link=DeepLinkConfig(role="Nobody")),
               db=db, workflows=FakeWorkflows())



def test_wrong_method_is_rendered_by_the_error_page(app: WebApp) -> None:
    r = get(client(app, "bob"), "/logout")
    assert r.status_code == 405 and "<h1>Method Not Allowed</h1>" in r.get_data(as_text=True)


def test_wsgi_entry_reports_a_broken_config_as_503_and_retries(app: WebApp, monkeypatch: pytest.MonkeyPatch) -> None:
    from openxpki_py.errors import ConfigError
    from openxpki_py.web.wsgi import CONFIG_ENV, LazyApplication

    monkeypatch.delenv(CONFIG_ENV, raising=False)
    seen: list[str | None] = []

    def factory(path: str | None) -> WebApp:
        seen.append(path)
        if len(seen) == 1:
            raise ConfigError("auth.roles: broken")
        return app

    lazy = LazyApplication(factory)
    c = Client(lazy)
    r = c.get("/", environ_overrides={"REMOTE_USER": "carol", CONFIG_ENV: "/etc/x.yaml"})
    # The one table's answer for a ConfigError (503), without the config's details.
    assert r.status_code == 503 and "auth.roles" not in r.get_data(as_text=True)
    r = c.get("/", base_url=BASE, environ_overrides={"REMOTE_USER": "carol", CONFIG_ENV: "/etc/x.yaml"})
    assert r.status_code == 200
    assert seen == ["/etc/x.yaml", "/etc/x.yaml"]


def test_a_slow_failed_build_answers_the_requests_that_waited_for_it(app: WebApp) -> None:
    """Five requests arrive while the database does not answer (each build fails after its timeout).

    They waited on the build's lock and then each built again, one after
    the other: the last answered after five timeouts.  Now the first
    failure answers the ones that waited, and a request after as long again
    builds anew.
    """
    from openxpki_py.web.wsgi import LazyApplication

    builds: list[float] = []
    database_up = threading.Event()

    def factory(_path: str | None) -> WebApp:
        builds.append(time.monotonic())
        if database_up.is_set():
            return app
        time.sleep(1.0)  # the connect timeout, shortened
        raise StorageError("the database cannot be reached (timeout expired)")

    lazy = LazyApplication(factory)
    answers: list[tuple[int, float]] = []
    barrier = threading.Barrier(5)

    def request() -> None:
        barrier.wait()
        started = time.monotonic()
        status = Client(lazy).get("/", environ_overrides={"REMOTE_USER": "carol"}).status_code
        answers.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=request) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [status for status, _ in answers] == [503] * 5
    assert len(builds) == 1
    assert max(took for _, took in answers) < 3.5, answers  # one build's time, not five
    database_up.set()
    failed = lazy._failed
    assert failed is not None
    time.sleep(max(0.0, failed[0] - time.monotonic()) + 0.05)  # as long as the build took: then built again
    assert Client(lazy).get("/", base_url=BASE, environ_overrides={"REMOTE_USER": "carol"}).status_code == 200
    assert len(builds) == 2


class RefusingWorkflows(FakeWorkflows):
    """Starting a workflow fails with ``error`` (raised in the view, outside any workflow action)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def start(self, wf_type: str, *, actor: str, role: str) -> WorkflowSummary:
        raise self.error


@pytest.mark.parametrize(("error", "status", "shown", "hidden"), [
    (AuthError("refused", code="auth.wrong_user"), 403, "cannot be used with this application", "refused"),
    (NotPermitted("card C1 is registered to another user", code="token.owned_by_other"), 403,
     "card C1 is registered to another user", ""),
    (PolicyViolation("profile needs approval", code="profile.approval"), 422, "profile.approval", ""),
    (UnexpectedStep("reload the page"), 409, "reload the page", ""),
    (StorageError("ORA-01555 snapshot too old"), 503, "not available right now", "ORA-01555"),
    (KeyError("internal-detail"), 500, "It has been logged", "internal-detail"),
])
def test_errors_escaping_a_view_use_the_one_table(db: Engine, grants: Grants, error: BaseException, status: int,
                                                  shown: str, hidden: str) -> None:
    """Any OpenXPKIError gets its mapped status (not a 500 page); only foreign exceptions are 500s."""
    app = WebApp(instance_name="t", auth=AUTH, web=WebConfig(), db=db, workflows=RefusingWorkflows(error),
                 run_handler=grants)
    r = get(client(app, "alice"), "/deeplink")
    body = r.get_data(as_text=True)
    assert r.status_code == status and shown in body
    assert not hidden or hidden not in body
