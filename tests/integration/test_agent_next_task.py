"""The agent goes on with the task an answer carries (``next_task``, docs/api.md), and still works without it.

The installed ``openxpki-py-token`` on a SoftHSM card against the project's
WSGI application on a local plain-http server (tests/support/agent.py); a
WSGI wrapper in front of the application records the agent's requests and,
playing a server from before ``next_task``, takes the key out of every answer.
The browser is played in-process, on the bare application.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from support.agent import Browser, run_agent, serve_app

# What the agent sends once the user confirmed the card: with the next task
# carried, one POST per step; without it, a GET /task after each.
CARRIED = ["POST /api/v1/csr", "POST /api/v1/receipt"] * 2
POLLED = ["POST /api/v1/csr", "GET /api/v1/task", "POST /api/v1/receipt", "GET /api/v1/task"] * 2


class AgentRequests:
    """WSGI wrapper: records ``METHOD path`` of each API request; ``older_server`` drops ``next_task``."""

    def __init__(self, app: Any, *, older_server: bool) -> None:
        self.app = app
        self.older_server = older_server
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.seen.append(f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
        if not self.older_server:
            return self.app(environ, start_response)  # type: ignore[no-any-return]
        answered: list[Any] = []
        chunks = self.app(environ, lambda status, headers, exc_info=None: answered.append((status, headers)))
        try:
            raw = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        status, headers = answered[0]
        body = json.loads(raw)
        had_it = isinstance(body, dict) and body.pop("next_task", None) is not None
        data = json.dumps(body).encode() if had_it else raw
        start_response(status, [(k, v) for k, v in headers if k.lower() != "content-length"]
                       + [("Content-Length", str(len(data)))])
        return [data]


@pytest.mark.parametrize("older_server", [False, True], ids=["next-task", "older-server"])
def test_agent_asks_for_its_task_only_when_no_answer_carries_it(make_instance: Callable[..., Any],
                                                                sqlite_engine: Any, make_token: Any,
                                                                tmp_path: Path, older_server: bool) -> None:
    token = make_token("alice-card", pin="482913")
    recorder: AgentRequests | None = None

    def wrap(app: Any) -> AgentRequests:
        nonlocal recorder
        recorder = AgentRequests(app, older_server=older_server)
        return recorder

    with serve_app(make_instance(sqlite_engine), wrap=wrap) as (app, url):
        browser = Browser(app)
        wf_id, code = browser.start()
        agent = run_agent(token, url, code, tmp_path / "state")
        browser.confirm_when_asked(wf_id)
        out, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
        assert "done: 2 certificates on the card" in err
        assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text
    assert recorder is not None
    seen = recorder.seen
    assert seen[:2] == ["POST /api/v1/enroll", "POST /api/v1/token"], seen
    first_csr = seen.index("POST /api/v1/csr")
    # Until the user confirms, the agent polls as before: the card report's wait is not the end of waiting.
    assert seen[2:first_csr] and set(seen[2:first_csr]) == {"GET /api/v1/task"}, seen
    assert seen[first_csr:] == (POLLED if older_server else CARRIED), seen
