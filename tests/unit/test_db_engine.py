"""Opening database engines (``openxpki_py.db.engine``)."""

from __future__ import annotations

import sys

import pytest

from openxpki_py.db.engine import open_engine
from openxpki_py.errors import StorageError


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host installed without openxpki-py[postgresql]: psycopg cannot be imported.
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StorageError, match=r"needs the Python driver psycopg: install openxpki-py\[postgresql\]") as info:
        open_engine("postgresql+psycopg://pki:secret@db.example.com/pki")
    assert "secret" not in str(info.value)
