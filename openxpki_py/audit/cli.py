"""``openxpki-py audit …``: verify the trail, sign a checkpoint, create the audit key.

Tampering is raised as :class:`~openxpki_py.errors.AuditChainBroken`; the
main CLI turns it into one line on stderr and exit code 12, like every
other error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ..errors import AuditChainBroken, ConfigError, OpenXPKIError
from .checkpoint import PublicKey, key_id_of
from .pending import chain_before_verify
from .service import AuditCheckpoints
from .verify import ChainReport, verify_chain


def register(subparsers: Any) -> None:
    """Add ``audit`` and its sub-commands to the main parser (each sets ``handler``)."""
    audit = subparsers.add_parser("audit", help="the audit trail: verify, checkpoints, audit key")
    sub = audit.add_subparsers(dest="sub", required=True)

    def leaf(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = leaf("verify", cmd_verify, "check the hash chain, the signed checkpoints and their copies outside "
             "the database; exit 12 naming the first bad row if anything is wrong")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.add_argument("--public-key", help="the audit key's public key (PEM) instead of asking the token")
    p.add_argument("--checkpoint-file", action="append", default=[], metavar="PATH",
                   help="another copy of the checkpoints (another node's file, a syslog extract); repeat")
    p = leaf("checkpoint", cmd_checkpoint, "sign the chain's head now (database and audit.checkpoint.file)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = leaf("init-key", cmd_init_key, "create the audit checkpoint key in the token (never extractable)")
    p.add_argument("--out", help="also write its public key (PEM) here")
    leaf("show-key", cmd_show_key, "print the audit key's public key (PEM) and key id")


def _services(args: argparse.Namespace) -> Any:
    from ..config import load_config
    from ..services import Services

    return Services(load_config(args.config))


def _checkpoints(services: Any) -> AuditCheckpoints:
    cp: AuditCheckpoints | None = services.audit_checkpoints
    if cp is None:
        raise ConfigError(f"{services.config.path}: audit.checkpoint is not configured (see docs/audit.md)")
    return cp


def _load_public_key(path: str) -> PublicKey:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise OpenXPKIError(f"cannot read public key file {path}: {exc.strerror}", code="io") from exc
    except ValueError as exc:
        raise ConfigError(f"--public-key {path}: not a PEM public key") from exc
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ConfigError(f"--public-key {path}: an RSA or EC key is needed, not {type(key).__name__}")
    return key


def cmd_verify(args: argparse.Namespace) -> int:
    services = _services(args)
    try:
        public_key = _load_public_key(args.public_key) if args.public_key else None
        extra = [Path(p) for p in args.checkpoint_file]
        checkpoints = services.audit_checkpoints
        if checkpoints is not None:
            report = checkpoints.verify(public_key=public_key, extra_files=extra)
        else:
            chained = chain_before_verify(services.db)
            with services.db.connect() as conn:
                report = verify_chain(conn, public_key=public_key, checkpoint_files=extra)
            report.warnings.extend(chained)
    finally:
        services.close()
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    else:
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    first = report.first_problem
    if first is not None:
        others = len(report.problems) - 1
        more = f" (and {others} more problem(s); --json lists all)" if others else ""
        raise AuditChainBroken(first.line() + more)
    if not args.json:
        print(_summary(report))
    return 0


def _summary(report: ChainReport) -> str:
    text = f"audit trail intact: {report.rows} row(s), head row {report.head_id}"
    last = report.last_checkpoint
    if last is None:
        return text + "; no checkpoint anchors it"
    return (text + f"; {len(report.checkpoints)} checkpoint(s), the last (#{last.seq}, "
            f"{last.created_at:%Y-%m-%d %H:%M:%S} UTC) covers row {last.row_id}; "
            f"{report.unanchored_rows} newer row(s) not yet anchored")


def cmd_checkpoint(args: argparse.Namespace) -> int:
    services = _services(args)
    try:
        checkpoint = _checkpoints(services).write()
    finally:
        services.close()
    assert checkpoint is not None  # None only with only_if_moved
    if args.json:
        print(json.dumps(checkpoint.as_json(), indent=2))
    else:
        print(f"checkpoint {checkpoint.seq} signed: row {checkpoint.row_id}, {checkpoint.row_count} row(s), "
              f"hash {checkpoint.entry_hash}")
    return 0


def cmd_init_key(args: argparse.Namespace) -> int:
    services = _services(args)
    try:
        cp = _checkpoints(services)
        public_key = cp.init_key()
        where = cp.key_backend.describe()
    finally:
        services.close()
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if args.out:
        Path(args.out).write_bytes(pem)
    print(f"audit key created: {where}, key id {key_id_of(public_key)}", file=sys.stderr)
    sys.stdout.write(pem.decode())
    return 0


def cmd_show_key(args: argparse.Namespace) -> int:
    services = _services(args)
    try:
        public_key = _checkpoints(services).public_key()
    finally:
        services.close()
    print(f"key id {key_id_of(public_key)}", file=sys.stderr)
    sys.stdout.write(public_key.public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    return 0
