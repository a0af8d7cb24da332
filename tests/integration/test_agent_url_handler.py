"""The code reaches the agent without being typed: the ``openxpki-py-token:``
link the page offers, the agent's URL handler (a .desktop entry made the
default with Debian's xdg-mime), and the code from standard input."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.agent import AGENT, PKCS11_TOOL, Browser, card_objects, printed_phrase, run_agent

XDG_MIME = shutil.which("xdg-mime")
LINK_RE = re.compile(r'<a id="agent-link" class="button" href="([^"]+)"')


def _desktop_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "XDG_CURRENT_DESKTOP", "KDE_SESSION_VERSION")}
    return {**env, "HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}


@pytest.mark.skipif(XDG_MIME is None, reason="xdg-utils is not installed (contrib/install/debian-deps.sh)")
def test_register_handler_makes_the_agent_the_default_for_its_links(tmp_path: Path) -> None:
    assert XDG_MIME is not None
    env = _desktop_env(tmp_path)
    done = subprocess.run([str(AGENT), "register-handler", "--server", "https://pki.example.org/openxpki",
                           "--module", "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    query = subprocess.run([XDG_MIME, "query", "default", "x-scheme-handler/openxpki-py-token"],
                           env=env, capture_output=True, text=True, timeout=60, check=True)
    assert query.stdout.strip() == "openxpki-py-token.desktop"
    entry = (tmp_path / "data" / "applications" / "openxpki-py-token.desktop").read_text()
    assert "MimeType=x-scheme-handler/openxpki-py-token;" in entry and "Terminal=true" in entry
    assert re.search(r"^Exec=\S+openxpki-py-token enroll --server https://pki.example.org/openxpki "
                     r"--module \S+ --url %u$", entry, re.M), entry


@pytest.mark.parametrize("link, why", [
    ("openxpki-py-token:enroll?server=https://evil.example/openxpki&code=ABCDE-FGHIJ", "works only with"),
    ("openxpki-py-token:enroll?server=https://pki.example.org/openxpki&code=ABCDE&next=x", "nothing else"),
    ("openxpki-py-token:delete?server=https://pki.example.org/openxpki&code=ABCDE", "is not an"),
    ("https://pki.example.org/openxpki?code=ABCDE", "is not an"),
    ("openxpki-py-token:enroll?server=https://pki.example.org/openxpki&code=--pin-file", "not an enrollment code"),
])
def test_links_naming_anything_but_the_registered_server_are_refused(link: str, why: str, tmp_path: Path) -> None:
    done = subprocess.run([str(AGENT), "enroll", "--server", "https://pki.example.org/openxpki", "--url", link,
                           "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 2 and why in done.stderr, done.stderr


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_the_pages_link_and_a_code_on_stdin_personalize_a_card(agent_server: tuple[Any, str], make_token: Any,
                                                                 tmp_path: Path) -> None:
    app, url = agent_server
    token = make_token("alice-card")
    browser = Browser(app)
    browser.env["HTTP_HOST"] = url.removeprefix("http://")  # the page names the server as the browser reached it
    wf_id, code = browser.start()
    page = browser.get(f"/deeplink/workflow/{wf_id}").text  # (a reload shows no code)
    assert code not in page
    shown = browser.post(f"/personalize/{wf_id}/code", {"csrf_token": re.search(
        r'name="csrf_token" value="([^"]+)"', page).group(1), "mode": "deeplink"}).text  # type: ignore[union-attr]
    link = LINK_RE.search(shown)
    assert link, shown
    agent = run_agent(token, url, "", tmp_path / "state", source=["--server", url, "--url", html.unescape(link.group(1))])
    browser.confirm_when_asked(wf_id, phrase=printed_phrase(agent))
    with agent:
        assert agent.stderr is not None
        err = agent.stderr.read()
        agent.wait(timeout=120)
    assert agent.returncode == 0 and "done: 2 certificates on the card" in err, err
    assert [kind for kind, _ in card_objects(token)].count("Certificate") == 2

    # The code on standard input: in no command line, no shell history.
    env = {**os.environ, "SOFTHSM2_CONF": str(token.softhsm.conf), "CARD_PIN": token.pin}
    piped = subprocess.run([str(AGENT), "enroll", "--server", url, "--code-file", "-", "--module", str(token.module),
                            "--token-label", token.label, "--pin-env", "CARD_PIN", "--state-dir", str(tmp_path / "s2"),
                            "--insecure-http-for-localhost", "--timeout", "5"],
                           input="ABCDE-FGHIJ-KLMNO-PQRST-U\n", env=env, capture_output=True, text=True, timeout=60,
                           check=False)
    assert piped.returncode == 4 and "[enroll.code_invalid]" in piped.stderr, piped.stderr  # read, sent, refused
