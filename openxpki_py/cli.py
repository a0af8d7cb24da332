"""``openxpki-py``: the operator's command line.

The only place where errors become exit codes (:data:`EXIT_CODES`): every
command raises the project's own exceptions and this module prints their
one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.exc import SQLAlchemyError

from . import errors, roles
from .audit.pending import chain_queued
from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, load_config
from .db.engine import storage_error

# Most specific first: the first matching class decides.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ConfigError, 3),
    (errors.TokenError, 4),
    (errors.PolicyViolation, 5),
    (errors.NotFound, 6),
    (errors.StorageError, 7),
    (errors.CAError, 8),
    (errors.DirectoryError, 9),
    (errors.AuthError, 10),
    (errors.WorkflowError, 11),
    (errors.AuditChainBroken, 12),
    (errors.OpenXPKIError, 1),
)

Handler = Callable[[argparse.Namespace], int]


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


# --- commands ------------------------------------------------------------------


def _services(args: argparse.Namespace) -> Any:
    from .services import Services

    return Services(load_config(args.config))


def cmd_config_check(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{cfg.path}: OK (instance {cfg.instance.name}, database {cfg.database.url.split(':', 1)[0]})")
    return 0


def cmd_db_init(args: argparse.Namespace) -> int:
    from .db.engine import create_schema

    services = _services(args)
    create_schema(services.db)
    print("database tables are in place")
    return 0


def cmd_db_ddl(args: argparse.Namespace) -> int:
    from .db.ddl import write_ddl

    for path in write_ddl(Path(args.out)):
        print(f"wrote {path}")
    return 0


def cmd_ca_init(args: argparse.Namespace) -> int:
    from .db.engine import create_schema

    services = _services(args)
    create_schema(services.db)
    with services.db.begin() as conn:
        result = services.ca.initialize(conn, actor=args.actor, external_root=args.external_root)
    if isinstance(result, x509.CertificateSigningRequest):
        pem = result.public_bytes(serialization.Encoding.PEM)
        _write_or_print(args.out, pem)
        print("CA key created in the token; have the CSR signed by the root, then run 'openxpki-py ca import-cert FILE'",
              file=sys.stderr)
    else:
        _write_or_print(args.out, result.public_bytes(serialization.Encoding.PEM))
        print(f"CA initialised: {result.subject.rfc4514_string()} (key: {services.ca.key_backend.describe()})",
              file=sys.stderr)
        _init_ocsp(services, args.actor)
    from .escrow.cli import init_escrow_key

    if init_escrow_key(services, only_if_needed=True):
        print(f"key-recovery key created ({services.escrow.custodian.describe()})", file=sys.stderr)
    return 0


def _init_ocsp(services: Any, actor: str) -> None:
    """The OCSP responder's key (in the token) and its first certificate, if OCSP is on."""
    responder = services.ocsp
    if responder is None:
        return
    cert = responder.create_key(actor=actor)
    print(f"OCSP responder key created ({responder.describe()}); certificate valid until "
          f"{cert.not_valid_after_utc:%Y-%m-%d}", file=sys.stderr)


def cmd_ca_ocsp_init(args: argparse.Namespace) -> int:
    services = _services(args)
    if services.ocsp is None:
        raise errors.ConfigError("ca.ocsp.enabled is false: there is no OCSP responder to set up")
    _init_ocsp(services, args.actor)
    return 0


def cmd_ca_card_admin_init(args: argparse.Namespace) -> int:
    """Create the master secret cards' admin credentials derive from (once, at setup)."""
    from .audit import append_audit

    services = _services(args)
    secret = services.card_admin
    if secret is None:
        raise errors.ConfigError("card_admin.enabled is false: no card admin master secret is used (docs/cards.md)")
    if secret.exists():
        print(f"{secret.describe()} exists already; it is never replaced")
        return 0
    secret.create()
    with services.db.begin() as conn:
        append_audit(conn, actor=args.actor, event="card.admin_secret", target=secret.key_label,
                     details={"token": secret.token_label})
    flags = secret.protection()
    print(f"{secret.describe()} created inside the token (CKA_NEVER_EXTRACTABLE: {flags['never_extractable']})")
    return 0


def cmd_ca_import_cert(args: argparse.Namespace) -> int:
    services = _services(args)
    data = _read_file(args.file, "certificate")
    with services.db.begin() as conn:
        cert = services.ca.import_certificate(conn, data, actor=args.actor)
    print(f"CA certificate imported and active: {cert.subject.rfc4514_string()}")
    _init_ocsp(services, args.actor)
    return 0


def cmd_ca_show(args: argparse.Namespace) -> int:
    """The CA certificate and whether its key can sign now (exit code of the key's error if not)."""
    services = _services(args)
    problem: errors.OpenXPKIError | None = None
    with services.db.connect() as conn:
        cert = services.ca.certificate(conn)
        try:
            services.ca.check_key(conn)
        except (errors.TokenError, errors.CAError) as exc:
            problem = exc
    info: dict[str, Any] = {
        "subject": cert.subject.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key": services.ca.key_backend.describe(),
        "key_status": "ok: signed and verified a test message" if problem is None
        else f"UNUSABLE [{problem.code}]: {problem.message}",
        "profiles": services.ca.profiles.names(),
    }
    _emit(args, info, lambda: [f"{k:12} {v if not isinstance(v, list) else ', '.join(v)}" for k, v in info.items()])
    if args.pem:
        print(cert.public_bytes(serialization.Encoding.PEM).decode(), end="")
    # Monitoring runs `ca show`: a CA that cannot sign is not "ok".
    return exit_code_for(problem) if problem is not None else 0


def _subject_attributes(services: Any, args: argparse.Namespace) -> dict[str, str]:
    attributes: dict[str, str] = {}
    if args.user:
        attributes.update(services.directory.find_user(args.user).certificate_values())
    if args.dns:
        attributes["dns"] = args.dns
    return attributes


def cmd_ca_issue(args: argparse.Namespace) -> int:
    from .crypto.ca import IssuanceRequest

    services = _services(args)
    if not args.user and not args.dns:
        raise errors.PolicyViolation(
            "name the subject: --user LOGIN (data from the directory) or --dns HOST (tls_server)",
            code="issue.subject",
        )
    data = _read_file(args.csr, "CSR")
    request = IssuanceRequest(
        csr=data,
        profile=args.profile,
        subject_attributes=_subject_attributes(services, args),
        owner=args.user,
        requester=args.actor,
        role=roles.CA_OPERATOR,
    )
    with services.db.begin() as conn:
        issued = services.ca.issue_certificate(conn, request)
    for note in issued.notes:
        print(f"note: {note}", file=sys.stderr)
    _write_or_print(args.out, issued.pem.encode())
    print(f"issued {issued.profile} certificate serial {issued.serial} for "
          f"{issued.certificate.subject.rfc4514_string()}", file=sys.stderr)
    return 0


def cmd_ca_revoke(args: argparse.Namespace) -> int:
    from .console.revocation import HOLD, revoke

    services = _services(args)
    row = revoke(services.db, services.ca, args.serial, args.reason, actor=args.actor, role=roles.CA_OPERATOR,
                 comment=args.comment)
    done = "put on hold" if args.reason == HOLD else f"revoked ({args.reason})"
    print(f"certificate {row['serial']} {done}; run 'openxpki-py ca crl' to publish")
    return 0


def cmd_ca_release_hold(args: argparse.Namespace) -> int:
    from .console.revocation import release_hold

    services = _services(args)
    row = release_hold(services.db, services.ca, args.serial, actor=args.actor, role=roles.CA_OPERATOR,
                       comment=args.comment)
    print(f"certificate {row['serial']} is valid again (hold released); the next CRL leaves it out")
    return 0


def cmd_ca_crl(args: argparse.Namespace) -> int:
    from .console.revocation import issue_crl_now

    services = _services(args)
    issued, written = issue_crl_now(services.db, services.ca, actor=args.actor, role=roles.CA_OPERATOR)
    if args.out:
        Path(args.out).write_bytes(issued.crl.public_bytes(serialization.Encoding.PEM))
    print(f"CRL number {issued.number} issued with {issued.revoked} revoked certificate(s); "
          f"next update {issued.crl.next_update_utc:%Y-%m-%d %H:%M} UTC")
    for path in written:
        print(f"published {path}")
    return 0


def cmd_ca_crl_info(args: argparse.Namespace) -> int:
    from .console.revocation import crl_status

    services = _services(args)
    status = crl_status(services.db, services.ca)
    if status is None:
        raise errors.NotFound("no CRL has been issued yet: run 'openxpki-py ca crl'")
    info = status.as_json()
    _emit(args, info, lambda: [f"{k:14} {v}" for k, v in info.items()])
    return 0


def cmd_ca_list(args: argparse.Namespace) -> int:
    from .db.certstore import list_certificates

    services = _services(args)
    with services.db.connect() as conn:
        rows = list_certificates(conn, owner=args.owner, limit=args.limit)
    items = [
        {"serial": r["serial"], "status": r["status"], "profile": r["profile"], "owner": r["owner"],
         "subject": r["subject"], "not_after": r["not_after"].isoformat(), "key_origin": r["key_origin"]}
        for r in rows
    ]
    _emit(args, items, lambda: [
        f"{i['serial']:40} {i['status']:8} {i['profile']:16} {i['not_after'][:10]}  "
        f"{i['key_origin'] or '-':16} {i['subject']}" for i in items
    ])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .web.serve import serve

    cfg = load_config(args.config)
    site = serve(cfg, port=args.port, host=args.host, htpasswd=Path(args.htpasswd) if args.htpasswd else None,
                 server_root=Path(args.server_root), apache_dir=Path(args.apache_dir) if args.apache_dir else None,
                 processes=args.processes, threads=args.threads, foreground=args.foreground)
    print(f"serving {cfg.instance.name} at {site.url}/openxpki/ (deep link {site.url}/token); "
          f"stop with: {site.apachectl} stop")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from .personalization.tokens import list_tokens

    services = _services(args)
    with services.db.connect() as conn:
        rows = list_tokens(conn, owner=args.owner)
    items = [{"serial": r["serial"], "owner": r["owner"], "status": r["status"], "model": r["model"],
              "last_seen": r["last_seen"].isoformat()} for r in rows]
    _emit(args, items, lambda: [f"{i['serial']:24} {i['status']:10} {i['owner'] or '-':16} {i['model'] or ''}"
                                for i in items])
    return 0


# ``token status`` is a card transition (console/cards.py): the same as the console's buttons.
STATUS_TRANSITIONS = {"active": "resume", "suspended": "suspend", "forgotten": "forgotten", "lost": "lost",
                      "destroyed": "damaged", "retired": "retire",
                      "revoked": "terminate"}


def cmd_token_status(args: argparse.Namespace) -> int:
    from .console.cards import transition

    services = _services(args)
    result = transition(services.db, services.ca, services.config.cards.lifecycle, args.serial,
                        STATUS_TRANSITIONS[args.status], actor=args.actor, role=roles.CA_OPERATOR,
                        workflows=services.workflows, comment=args.comment)
    print(result.summary() + (" (run 'openxpki-py ca crl')" if result.certificates else ""))
    return 0


def cmd_token_release(args: argparse.Namespace) -> int:
    from .personalization.tokens import release_token

    services = _services(args)
    with services.db.begin() as conn:
        release_token(conn, args.serial, actor=args.actor)
    print(f"card {args.serial} has no owner now; the next user who confirms it gets it")
    return 0


# --- helpers -------------------------------------------------------------------


def _read_file(name: str, what: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise errors.OpenXPKIError(f"cannot read {what} file {name}: {exc.strerror}", code="io") from exc


def _write_or_print(out: str | None, data: bytes) -> None:
    if out:
        Path(out).write_bytes(data)
    else:
        sys.stdout.write(data.decode())


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], list[str]]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        for line in human():
            print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openxpki-py", description="openxpki-py operator commands")
    parser.add_argument("--config", help=f"instance config (default: ${CONFIG_ENV} or {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--actor", default="cli", help="name recorded in the audit log (default: cli)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="sub", required=True)
    command(cfg, "check", cmd_config_check, "load and validate the config file")

    db = sub.add_parser("db", help="database").add_subparsers(dest="sub", required=True)
    command(db, "init", cmd_db_init, "create missing tables")
    p = command(db, "ddl", cmd_db_ddl, "write sql/<dialect>.sql from the schema")
    p.add_argument("--out", default="sql", help="folder (default: sql)")

    ca = sub.add_parser("ca", help="the certification authority").add_subparsers(dest="sub", required=True)
    p = command(ca, "init", cmd_ca_init, "create the CA key in the token and a self-signed root (or a CSR)")
    p.add_argument("--external-root", action="store_true", help="make a CSR for an external root instead")
    p.add_argument("--out", help="write the certificate / CSR (PEM) here instead of stdout")
    p = command(ca, "import-cert", cmd_ca_import_cert, "activate the CA certificate signed by the external root")
    p.add_argument("file", help="certificate file (PEM or DER)")
    command(ca, "ocsp-init", cmd_ca_ocsp_init, "create the OCSP responder's key in the token and certify it")
    command(ca, "card-admin-init", cmd_ca_card_admin_init,
            "create the master secret in the CA's token from which every card's admin credentials derive")
    p = command(ca, "show", cmd_ca_show, "show the active CA certificate")
    p.add_argument("--pem", action="store_true", help="also print the certificate in PEM")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command(ca, "issue", cmd_ca_issue, "issue a certificate for a CSR (subject from the directory)")
    p.add_argument("--profile", required=True, help="smartcard_logon, encryption, tls_server …")
    p.add_argument("--csr", required=True, help="CSR file (PEM or DER), - for stdin")
    p.add_argument("--user", help="login of the certificate's owner (looked up in the directory)")
    p.add_argument("--dns", help="host name (tls_server profile)")
    p.add_argument("--out", help="write the certificate (PEM) here instead of stdout")
    p = command(ca, "revoke", cmd_ca_revoke, "revoke a certificate")
    p.add_argument("serial", help="serial number (hex)")
    p.add_argument("--reason", default="unspecified",
                   help="RFC 5280 reason, e.g. keyCompromise, superseded; certificateHold suspends it")
    p.add_argument("--comment", help="why (kept in the audit trail)")
    p = command(ca, "release-hold", cmd_ca_release_hold, "end a certificateHold (removeFromCRL)")
    p.add_argument("serial", help="serial number (hex)")
    p.add_argument("--comment", help="why (kept in the audit trail)")
    p = command(ca, "crl", cmd_ca_crl, "issue (and publish) a new CRL")
    p.add_argument("--out", help="also write the CRL (PEM) here")
    p = command(ca, "crl-info", cmd_ca_crl_info, "the current CRL: number, this/next update, entries")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command(ca, "list", cmd_ca_list, "list issued certificates")
    p.add_argument("--owner", help="only this owner's certificates")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    tok = sub.add_parser("token", help="the smartcard registry").add_subparsers(dest="sub", required=True)
    p = command(tok, "list", cmd_token_list, "list registered cards")
    p.add_argument("--owner", help="only this user's cards")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = command(tok, "status", cmd_token_status,
                "suspend a card (certificates on hold) or make it active again; mark it lost, destroyed or revoked "
                "(its certificates are revoked: keyCompromise, superseded, affiliationChanged)")
    p.add_argument("serial")
    p.add_argument("status", choices=tuple(STATUS_TRANSITIONS))
    p.add_argument("--comment", help="why (kept in the audit trail)")
    p = command(tok, "release", cmd_token_release, "forget a card's owner so another user may personalize it")
    p.add_argument("serial")
    p = command(sub, "serve", cmd_serve, "run the instance in Apache via mod_wsgi-express (demo, small sites)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--htpasswd", help="Basic authentication users, standing in for the SSO")
    p.add_argument("--server-root", required=True, help="folder for Apache's generated files and logs")
    p.add_argument("--apache-dir", help="the shipped apache/ folder (default: found next to the code)")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=10)
    p.add_argument("--foreground", action="store_true", help="run Apache in the foreground")
    command(sub, "init", cmd_db_init, "create the database tables (same as 'db init')")
    # Sub-commands that live next to their subsystem.
    from .audit.cli import register as register_audit
    from .console.cli import register as register_console
    from .escrow.cli import register as register_escrow
    from .workflow.cli import register as register_workflow

    register_workflow(sub)
    register_audit(sub)
    register_console(sub)
    register_escrow(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        try:
            return int(args.handler(args) or 0)
        except SQLAlchemyError as exc:
            raise storage_error(exc) from exc
        finally:
            chain_queued()  # the command's audit rows, queued on PostgreSQL/Oracle, are chained before it exits
    except errors.OpenXPKIError as exc:
        print(f"openxpki-py: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
