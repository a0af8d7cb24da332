"""A stolen enrollment code, with the real agent against the real application.

The code is a bearer secret (shoulder-surfed, a screenshot, a shared
screen): the attacker's agent redeems it first and reports the victim's
card.  The page then shows the attacker's pairing phrase, which the victim's
own agent never printed; nothing happens on or for the card until the
victim confirms that phrase, and her "No" ends the attacker's credential.
A new code after the card was confirmed needs the same confirmation again.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from support.agent import PKCS11_TOOL, Browser, card_objects, printed_phrase, run_agent

from openxpki_py.db.schema import certificate

pytestmark = pytest.mark.skipif(PKCS11_TOOL is None, reason="OpenSC's pkcs11-tool is not installed")


def _issued(app: Any) -> int:
    with app.instance.services.db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(certificate)).scalar_one())


def _finish(agent: subprocess.Popen[str], timeout: float = 120) -> tuple[str, str]:
    """What is left on the pipes once the agent exits (after printed_phrase read the start)."""
    assert agent.stdout is not None and agent.stderr is not None
    with agent:  # closes the pipes
        err = agent.stderr.read()
        out = agent.stdout.read()
        agent.wait(timeout=timeout)
    return out, err


def test_stolen_code_the_victim_sees_a_foreign_phrase_and_the_attacker_gets_nothing(
        agent_server: tuple[Any, str], make_token: Any, tmp_path: Path) -> None:
    app, url = agent_server
    card = make_token("alice-card")  # the attacker reports this card's serial as if it were at his PC
    browser = Browser(app)
    wf_id, code = browser.start()

    attacker = run_agent(card, url, code, tmp_path / "attacker")
    attacker_phrase = printed_phrase(attacker)
    victim = run_agent(card, url, code, tmp_path / "victim")
    _, victim_err = _finish(victim)
    assert victim.returncode == 4 and "[enroll.code_used]" in victim_err, victim_err
    assert "pairing phrase" not in victim_err  # her agent shows no words at all …
    page, shown = browser.phrase_when_asked(wf_id)
    assert shown == attacker_phrase  # … while the page shows the attacker's, next to her card
    assert card.label in page or "Serial number" in page

    time.sleep(1.5)  # the attacker's agent polls: without her yes it gets no key task
    assert _issued(app) == 0 and card_objects(card) == []
    browser.answer(wf_id, page, "reject_token")  # the words are not her agent's: "No"
    _, attacker_err = _finish(attacker)
    assert attacker.returncode == 4 and "[auth.token_expired]" in attacker_err, attacker_err
    assert _issued(app) == 0 and card_objects(card) == []

    # Her own run with a new code: the phrases agree; a killed run's successor is asked about again.
    wf_id, code = browser.start()
    mine = run_agent(card, url, code, tmp_path / "victim")
    phrase = printed_phrase(mine)
    assert phrase != attacker_phrase
    browser.confirm_when_asked(wf_id, phrase=phrase)
    assert mine.stderr is not None
    for line in mine.stderr:
        if line.startswith("CSR sent; certificate issued"):
            mine.send_signal(signal.SIGKILL)
            break
    _finish(mine)
    assert _issued(app) == 1

    wf_id, new_code = browser.start()
    rerun = run_agent(card, url, new_code, tmp_path / "victim")
    new_phrase = printed_phrase(rerun)
    time.sleep(1.0)
    assert _issued(app) == 1 and rerun.poll() is None  # waiting for her, not installing
    browser.confirm_when_asked(wf_id, phrase=new_phrase)
    _, err = _finish(rerun)
    assert rerun.returncode == 0 and "done: 2 certificates on the card" in err, err
    assert _issued(app) == 2
