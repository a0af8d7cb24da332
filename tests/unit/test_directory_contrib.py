"""contrib/ldap: the two schema forms agree; the demo data is what the tests expect."""

from __future__ import annotations

import re
from pathlib import Path

import ldif

REPO = Path(__file__).resolve().parents[2]
LDAP_DIR = REPO / "contrib" / "ldap"


def _definitions_from_schema_file(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    found = re.findall(r"^(?:attributetype|objectclass)\s+(\(.*?\))\s*$", body, re.M | re.S | re.I)
    return [" ".join(item.split()) for item in found]


def test_schema_and_cn_config_ldif_agree() -> None:
    from_schema = _definitions_from_schema_file((LDAP_DIR / "openxpki-py.schema").read_text())
    with open(LDAP_DIR / "openxpki-py.ldif", "rb") as stream:
        parser = ldif.LDIFRecordList(stream)
        parser.parse()
    [(dn, record)] = parser.all_records
    assert dn == "cn=openxpki-py,cn=schema,cn=config"
    from_ldif = [" ".join(v.decode().split()) for v in record["olcAttributeTypes"] + record["olcObjectClasses"]]
    assert from_schema == from_ldif
    assert len(from_schema) == 4  # userPrincipalName, sAMAccountName, objectSid, pkiDirectoryUser


def test_placeholder_oid_is_flagged() -> None:
    for name in ("openxpki-py.schema", "openxpki-py.ldif"):
        text = (LDAP_DIR / name).read_text()
        assert "1.3.6.1.4.1.32473" in text and "PLACEHOLDER" in text


def test_demo_users_and_groups() -> None:
    with open(LDAP_DIR / "demo.ldif", "rb") as stream:
        parser = ldif.LDIFRecordList(stream)
        parser.parse()
    entries = {dn: record for dn, record in parser.all_records}
    people = "ou=people,dc=example,dc=com"
    alice = entries[f"uid=alice,{people}"]
    for attribute in ("cn", "givenName", "sn", "mail", "userPrincipalName", "employeeNumber", "departmentNumber"):
        assert attribute in alice
    assert "mail" not in entries[f"uid=dave,{people}"]
    assert entries["cn=ra-operators,ou=groups,dc=example,dc=com"]["member"] == [f"uid=bob,{people}".encode()]
    assert entries["cn=ca-operators,ou=groups,dc=example,dc=com"]["member"] == [f"uid=carol,{people}".encode()]
