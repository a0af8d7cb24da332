"""The token agent as users install it: its own wheel, in a venv without the server.

``packages/openxpki-py-token`` is built into a wheel, installed into a bare
venv made from Debian's Python (pip fetches only the agent's declared
dependencies), and that venv's ``openxpki-py-token`` personalizes a SoftHSM
card against the test server.  If the agent ever imports the server, or the
server's libraries, this fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.agent import PKCS11_TOOL, Browser, card_objects, run_agent

ROOT = Path(__file__).resolve().parents[2]
TOKEN_PROJECT = ROOT / "packages" / "openxpki-py-token"
# Distributions only the server needs; none may reach a user's PC.
SERVER_ONLY = {"openxpki-py", "werkzeug", "mako", "sqlalchemy", "python-ldap", "psycopg", "psycopg-binary",
               "oracledb", "pyyaml", "markupsafe"}


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, **kwargs)
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def bare_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``openxpki-py-token`` from its own wheel in a venv that has nothing else."""
    base = tmp_path_factory.mktemp("agent-wheel")
    wheels = base / "wheels"
    # No build isolation: setuptools and wheel come from the test venv, not the network.
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          "--wheel-dir", str(wheels), str(TOKEN_PROJECT)])
    (wheel,) = wheels.glob("openxpki_py_token-*.whl")
    venv = base / "venv"
    _run(["/usr/bin/python3", "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)])
    yield venv / "bin" / "openxpki-py-token"


def test_wheel_brings_only_the_agents_dependencies(bare_agent: Path) -> None:
    pip = bare_agent.with_name("pip")
    listed = _run([str(pip), "list", "--format=freeze"]).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines() if "==" in line}
    assert {"openxpki-py-token", "cryptography", "python-pkcs11"} <= installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    python = bare_agent.with_name("python")
    # Run outside the checkout: `python -c` puts the working folder on sys.path.
    probe = subprocess.run([str(python), "-c", "import openxpki_py"], capture_output=True, text=True,
                           cwd=bare_agent.parent, env={"PATH": "/usr/bin:/bin"}, timeout=60, check=False)
    assert probe.returncode != 0 and "No module named 'openxpki_py'" in probe.stderr


def test_wheel_agent_help(bare_agent: Path) -> None:
    result = _run([str(bare_agent), "--help"])
    assert "enroll" in result.stdout
    enroll_help = _run([str(bare_agent), "enroll", "--help"]).stdout
    assert "--module" in enroll_help and "OPENXPKI_PY_TOKEN_MODULE" in enroll_help


@pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")
def test_wheel_agent_personalizes_a_card(bare_agent: Path, agent_server: tuple[Any, str], make_token: Any,
                                         tmp_path: Path) -> None:
    app, url = agent_server
    token = make_token("alice-card", pin="482913")
    browser = Browser(app)
    wf_id, code = browser.start()
    agent = run_agent(token, url, code, tmp_path / "state", agent=bare_agent)
    browser.confirm_when_asked(wf_id)
    out, err = agent.communicate(timeout=120)
    assert agent.returncode == 0, err
    assert "done: 2 certificates on the card" in err
    assert [kind for kind, _ in card_objects(token)].count("Certificate") == 2
    assert "Your card is ready." in browser.get(f"/deeplink/workflow/{wf_id}").text
