"""Shared fixtures.  Each real component has its own plugin in ``support/``:
SoftHSM2 tokens, a private slapd, databases (SQLite and PostgreSQL), Apache,
the smartcard stack (pcscd + vpcd + software OpenPGP and PIV cards).
"""

pytest_plugins = [
    "support.softhsm",
    "support.databases",
    "support.slapd",
    "support.apache",
    "support.instance",
    "support.browser",
    "support.agent",
    "support.kdc",
    "support.smartcards",
    "support.cluster",
]
