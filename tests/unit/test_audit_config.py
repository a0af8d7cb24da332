"""The audit.checkpoint section: its own key, a copy outside the database, errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpki_py.config import load_config, parse_config
from openxpki_py.errors import ConfigError

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "config" / "config.yaml"


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONTRIB.read_text())
    return data


def test_example_has_checkpoints_with_their_own_key() -> None:
    cp = load_config(CONTRIB).audit.checkpoint
    assert cp.key.key_label == "audit-checkpoint" and cp.key.algorithm == "ec-p256"
    assert cp.interval_minutes == 60 and cp.file == Path("/var/log/openxpki-py/audit-checkpoints.log")


def test_section_is_optional() -> None:
    data = example()
    del data["audit"]
    assert parse_config(data, CONTRIB).audit.checkpoint is None


def test_the_ca_key_is_refused() -> None:
    data = example()
    data["audit"]["checkpoint"]["key"] = dict(data["ca"]["key"])
    with pytest.raises(ConfigError, match=r"^audit\.checkpoint\.key: names the CA key \(ca\.key\)"):
        parse_config(data, CONTRIB)


@pytest.mark.parametrize(("change", "message"), [
    ({"file": None, "syslog": False}, r"audit\.checkpoint\.file: required key is missing"),
    ({"interval_minutes": 0}, r"audit\.checkpoint\.interval_minutes: expected an integer >= 1"),
    ({"intervall_minutes": 5}, r"audit\.checkpoint\.intervall_minutes: unknown key"),
])
def test_errors_name_the_key(change: dict[str, Any], message: str) -> None:
    data = example()
    data["audit"]["checkpoint"].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_config(data, CONTRIB)


def test_syslog_alone_is_enough() -> None:
    data = example()
    data["audit"]["checkpoint"].update({"file": None, "syslog": True})
    cp = parse_config(data, CONTRIB).audit.checkpoint
    assert cp.file is None and cp.syslog
