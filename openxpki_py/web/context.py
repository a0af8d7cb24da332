"""Everything a view needs about the current request, in one object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.routing import MapAdapter
from werkzeug.wrappers import Request, Response

from ..auth.identity import Identity
from ..auth.sessions import WebSession

if TYPE_CHECKING:
    from .app import WebApp


class WebRequest(Request):
    # The UI posts small forms; anything large is a mistake or an attack.
    max_content_length = 1024 * 1024
    max_form_memory_size = 256 * 1024


@dataclass
class RequestContext:
    app: WebApp
    request: WebRequest
    adapter: MapAdapter
    identity: Identity | None = None
    session: WebSession | None = None

    def url_for(self, endpoint: str, **values: Any) -> str:
        return str(self.adapter.build(endpoint, values))

    def render(self, template: str, *, status: int = 200, hide_menu: bool = False, **values: Any) -> Response:
        return self.app.render_page(self, template, status=status, hide_menu=hide_menu, **values)

    def flash(self, message: str) -> None:
        """A status for the next page of this session (after a redirect)."""
        assert self.session is not None
        with self.app.db.begin() as conn:
            self.app.sessions.flash(conn, self.session, message)

    def take_flash(self) -> str:
        assert self.session is not None
        if "flash" not in self.session.data:
            return ""  # the usual case: no write
        with self.app.db.begin() as conn:
            return self.app.sessions.take_flash(conn, self.session) or ""

    @property
    def login(self) -> str:
        assert self.identity is not None
        return self.identity.login

    @property
    def groups(self) -> frozenset[str]:
        """The SSO groups of this request's user (auth.sso's ``groups`` attribute)."""
        assert self.identity is not None
        return self.identity.groups

    @property
    def role(self) -> str | None:
        return self.session.role if self.session is not None else None
