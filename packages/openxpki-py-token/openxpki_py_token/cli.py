"""``openxpki-py-token``: the command a user runs on their PC to personalize a card.

The only place where errors become exit codes (:data:`EXIT_CODES`) and
messages: 0 done, 1 failed, 2 usage, 3 card problem, 4 refused by the
server, 5 network or TLS.  Progress goes to stderr, the issued certificates
to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .handler import parse_enroll_url, register_handler, same_server

from . import __version__
from .api_client import ApiClient, api_base_url
from .card import Card
from .card_profiles import PROFILE_CHOICES
from .credentials import CardCredentials
from .enroll import IssuedCertificate, TokenAgent
from .errors import (
    EnrollmentStopped,
    ForeignKeyRefused,
    OpenXPKIError,
    ServerRefused,
    ServerUnreachable,
    TokenError,
    TokenNotFound,
    UsageError,
)
from .opensc import MODULE_ENV, find_module
from .pins import CardPins, new_pin, terminal_prompt
from .openpgp_unblock import OpenPgpUnblockCard
from .piv_card import INSTALL_HINT, PivCard, find_piv_reader, piv_available
from .progress import Progress
from .secret import SecretRef
from .state import DEFAULT_STATE_DIR, StateStore
from .terminal import printable
from .unblock import PinUnblocker

PROG = "openxpki-py-token"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CARD, EXIT_REFUSED, EXIT_NETWORK = 0, 1, 2, 3, 4, 5

# Most specific first: the first matching class decides.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (TokenError, EXIT_CARD),
    (ServerRefused, EXIT_REFUSED),
    (ServerUnreachable, EXIT_NETWORK),
    (OpenXPKIError, EXIT_FAILED),
)

# What the user can do about a refusal, by the server's stable error code.
HINTS: dict[str, str] = {
    "enroll.code_invalid": "check the code: copy it again from the personalization page",
    "enroll.code_expired": "reload the personalization page for a new code and run again",
    "enroll.code_used": "reload the personalization page for a new code and run again; if no earlier run of "
                        "yours used this code, someone else did: first press \"No\" on the page",
    "enroll.agent_key": "update openxpki-py-token: this server pairs agents with the web page",
    "agent.unconfirmed": "confirm this agent's phrase on the personalization page, then run again",
    "enroll.rate_limited": "too many tries: wait a little, then run again",
    "auth.token_missing": "reload the personalization page for a new code and run again",
    "auth.token_invalid": "reload the personalization page for a new code and run again",
    "auth.token_expired": "reload the personalization page for a new code and run again",
    "token.owned_by_other": "this card belongs to someone else: use your own card",
    "token.unusable": "this card may not be used any more: use another card or ask your PKI administrator",
    "token.mismatch": "this personalization was started with another card: insert that one, "
                      "or start again in the browser",
    "unblock.credential_used": "start a new PIN unblock on your page (My certificates), then run the agent again",
    "unblock.state": "start a new PIN unblock on your page (My certificates), then run the agent again",
    "card.admin_credentials_limit": "start a new personalization in the browser, then run the agent with its code",
    "card.admin_credentials_unsupported": "this card type has no per-card admin credentials: use "
                                          "--so-pin-file/--management-key-file",
}


def exit_code_for(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Personalize your smartcard with certificates from openxpki-py.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    enroll = commands.add_parser(
        "enroll", help="generate keys on the card and install their certificates",
        description="Run the command the personalization page shows; it continues where an "
                    "interrupted run stopped.")
    enroll.add_argument("--server", metavar="URL",
                        help="the server URL shown on the personalization page (with --url: the only server "
                             "the link may name)")
    code = enroll.add_mutually_exclusive_group(required=True)
    code.add_argument("--code", help="the enrollment code shown on the page")
    code.add_argument("--code-file", type=Path, metavar="FILE",
                      help="read the code from FILE's first line ('-': standard input), so that it is in no "
                           "command line or shell history")
    code.add_argument("--url", metavar="URL",
                      help="an openxpki-py-token:enroll?server=…&code=… link from the page (the URL handler "
                           "passes it)")
    enroll.add_argument("--module", type=Path, metavar="PATH",
                        help=f"PKCS#11 module of the card (default: ${MODULE_ENV}, else OpenSC's "
                             "module where this system installs it)")
    which = enroll.add_mutually_exclusive_group()
    which.add_argument("--slot", type=int, metavar="N", help="PKCS#11 slot ID of the card")
    which.add_argument("--token-label", metavar="LABEL", help="the card's token label")
    enroll.add_argument("--ca-file", type=Path, metavar="PEM",
                        help="trust only this CA for the server's TLS certificate (default: the system's CAs)")
    pin = enroll.add_mutually_exclusive_group()
    pin.add_argument("--pin-file", type=Path, metavar="FILE", help="read the card's PIN from FILE")
    pin.add_argument("--pin-env", metavar="VAR", help="read the card's PIN from environment variable VAR")
    so_pin = enroll.add_mutually_exclusive_group()
    so_pin.add_argument("--so-pin-file", type=Path, metavar="FILE",
                        help="read the SO (admin) PIN from FILE (only cards that need it)")
    so_pin.add_argument("--so-pin-env", metavar="VAR", help="read the SO (admin) PIN from VAR")
    enroll.add_argument("--card-profile", choices=PROFILE_CHOICES, default="auto",
                        help="how to treat the card (default: auto: a PIV card if one answers, when the "
                             "PIV extra is installed and no --module/--slot/--token-label is given)")
    enroll.add_argument("--reader", metavar="NAME",
                        help="PIV cards: use the reader whose name contains NAME")
    mgmt = enroll.add_mutually_exclusive_group()
    mgmt.add_argument("--management-key-file", type=Path, metavar="FILE",
                      help="PIV cards: read the card's management key (hex) from FILE, for servers "
                           "without per-card admin credentials (default: the key the server derives for "
                           "this card, else the factory key with a warning)")
    mgmt.add_argument("--management-key-env", metavar="VAR",
                      help="PIV cards: read the card's management key (hex) from VAR")
    enroll.add_argument("--rotate-management-key", type=Path, metavar="FILE",
                        help="PIV cards: at the end set a new random management key and save it to FILE "
                             "(must not exist) for escrow")
    _run_options(enroll, waiting="give up waiting after this long", never_logged="never PINs")
    _unblock_parser(commands)
    handler = commands.add_parser(
        "register-handler", help="open the web page's openxpki-py-token: links with this agent (Linux desktops)",
        description="Writes ~/.local/share/applications/openxpki-py-token.desktop and makes it the handler "
                    "of openxpki-py-token: links (xdg-mime). The links may then name only --server.")
    handler.add_argument("--server", required=True, metavar="URL",
                         help="your organisation's server URL, as the personalization page shows it")
    handler.add_argument("--module", metavar="PATH", help="PKCS#11 module of the card, passed to every run")
    handler.add_argument("--token-label", metavar="LABEL", help="the card's token label, passed to every run")
    handler.add_argument("--ca-file", metavar="PEM", help="CA file for the server's TLS certificate")
    handler.add_argument("--card-profile", choices=PROFILE_CHOICES, help="how to treat the card")
    handler.add_argument("--insecure-http-for-localhost", action="store_true",
                         help="allow plain http to 127.0.0.1/localhost (demo and tests only)")
    handler.add_argument("--program", metavar="PATH",
                         help="the agent's program to run (default: this one)")
    return parser


def _unblock_parser(commands: Any) -> None:
    unblock = commands.add_parser(
        "unblock", help="unblock your PIV card's PIN and set a new one (with the code from your unblock page)",
        description="Run the command your PIN unblock page shows. You type the new PIN here (twice); it never "
                    "leaves this computer. The server sends this run the card's PUK once, after you confirmed the "
                    "card and the phrase on the page.")
    unblock.set_defaults(url=None)
    unblock.add_argument("--server", required=True, metavar="URL", help="the server URL shown on the page")
    code = unblock.add_mutually_exclusive_group(required=True)
    code.add_argument("--code", help="the code shown on the page")
    code.add_argument("--code-file", type=Path, metavar="FILE",
                      help="read the code from FILE's first line ('-': standard input)")
    new_pin = unblock.add_mutually_exclusive_group()
    new_pin.add_argument("--new-pin-file", type=Path, metavar="FILE", help="read the new PIN from FILE")
    new_pin.add_argument("--new-pin-env", metavar="VAR", help="read the new PIN from environment variable VAR")
    unblock.add_argument("--reader", metavar="NAME", help="use the reader whose name contains NAME")
    unblock.add_argument("--ca-file", type=Path, metavar="PEM",
                         help="trust only this CA for the server's TLS certificate (default: the system's CAs)")
    _run_options(unblock, waiting="give up waiting for the confirmation after this long",
                 never_logged="never PINs or the PUK")


def _run_options(command: argparse.ArgumentParser, *, waiting: str, never_logged: str) -> None:
    """What every run against the server takes: where it remembers itself, plain http for tests, patience, -v."""
    command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                         help=f"where an interrupted run is remembered (default: {DEFAULT_STATE_DIR})")
    command.add_argument("--insecure-http-for-localhost", action="store_true",
                         help="allow plain http to 127.0.0.1/localhost (demo and tests only)")
    command.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                         help=f"{waiting} (default: 900)")
    command.add_argument("-v", "--verbose", action="store_true", help=f"log each step ({never_logged})")


def cmd_unblock(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    server, code = _server_and_code(args)
    source = _secret("--new-pin-file", "--new-pin-env", args.new_pin_file, args.new_pin_env)
    prompt = terminal_prompt()
    progress = Progress()
    api = ApiClient(server, ca_file=args.ca_file, allow_http_localhost=args.insecure_http_for_localhost,
                    retry_window=args.timeout, notify=progress.step)
    card = unblock_card(args.reader)
    PinUnblocker(api, card, StateStore(args.state_dir), lambda name: new_pin(source, prompt, card=name),
                 timeout=args.timeout, progress=progress).unblock(code)
    return EXIT_OK


def unblock_card(reader: str | None) -> PivCard | OpenPgpUnblockCard:
    """A PIV card if one answers, else an OpenPGP card; both over PC/SC (the PIV extra brings pyscard)."""
    if not piv_available():
        raise UsageError(INSTALL_HINT.replace("PIV cards need", "unblocking a PIN needs"))
    if find_piv_reader(reader) is not None:
        return PivCard(CardPins(), CardCredentials(), reader=reader)
    found = OpenPgpUnblockCard.find(reader)
    if found is None:
        where = f" in a reader matching {reader!r}" if reader else ""
        raise TokenNotFound(f"no PIV or OpenPGP card found{where}: insert the card whose PIN is blocked")
    return found


def cmd_register_handler(args: argparse.Namespace) -> int:
    api_base_url(args.server, allow_http_localhost=args.insecure_http_for_localhost)  # refuse it now, not per click
    program = args.program or str(Path(sys.argv[0]).resolve())
    command = [program, "enroll", "--server", args.server]
    for option, value in (("--module", args.module), ("--token-label", args.token_label),
                          ("--ca-file", args.ca_file), ("--card-profile", args.card_profile)):
        if value:
            command += [option, str(value)]
    if args.insecure_http_for_localhost:
        command.append("--insecure-http-for-localhost")
    path = register_handler(command)
    print(f"{PROG}: openxpki-py-token: links now start the agent for {printable(args.server)} ({path})",
          file=sys.stderr)
    return EXIT_OK


def _server_and_code(args: argparse.Namespace) -> tuple[str, str]:
    """From --url (checked against --server), --code-file or --code."""
    if args.url is not None:
        link = parse_enroll_url(args.url)
        if args.server is not None and not same_server(args.server, link.server):
            raise UsageError(f"the link names server {printable(link.server)!r}, but this agent works only with "
                             f"{printable(args.server)!r}; refused")
        return link.server, link.code
    if args.server is None:
        raise UsageError("--server is required (copy the command from the web page)")
    if args.code_file is not None:
        try:
            text = sys.stdin.readline() if str(args.code_file) == "-" else \
                args.code_file.read_text(encoding="utf-8").partition("\n")[0]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--code-file {args.code_file}: cannot read it ({exc})") from None
        if not text.strip():
            raise UsageError(f"--code-file {args.code_file}: no code in it")
        return args.server, text.strip()
    return args.server, args.code


def cmd_enroll(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    server, code = _server_and_code(args)
    pins = CardPins.interactive(
        user=_secret("--pin-file", "--pin-env", args.pin_file, args.pin_env),
        so=_secret("--so-pin-file", "--so-pin-env", args.so_pin_file, args.so_pin_env))
    progress = Progress()
    # Retries of a failing server count against the same --timeout as waiting.
    api = ApiClient(server, ca_file=args.ca_file,
                    allow_http_localhost=args.insecure_http_for_localhost,
                    retry_window=args.timeout, notify=progress.step)
    credentials = CardCredentials(
        management_key=_secret("--management-key-file", "--management-key-env",
                               args.management_key_file, args.management_key_env),
        rotate_to=args.rotate_management_key,
        so_pin_given=args.so_pin_file is not None or args.so_pin_env is not None)
    credentials.check_rotation_target()
    card = open_card(args, pins, credentials)
    agent = TokenAgent(api, card, StateStore(args.state_dir), profile_name=args.card_profile,
                       timeout=args.timeout, progress=progress)
    for cert in agent.enroll(code):
        print(_result_line(cert))
    return EXIT_OK


def open_card(args: argparse.Namespace, pins: CardPins, credentials: CardCredentials) -> Card | PivCard:
    """The route to the card: PIV commands over PC/SC, or a PKCS#11 module (see card_profiles)."""
    if args.card_profile == "piv":
        return PivCard(pins, credentials, reader=args.reader)  # UsageError if the extra is missing
    pkcs11_asked = args.module is not None or args.slot is not None or args.token_label is not None
    if (args.card_profile == "auto" and not pkcs11_asked and piv_available()
            and find_piv_reader(args.reader) is not None):
        return PivCard(pins, credentials, reader=args.reader)
    return Card(find_module(args.module), pins, slot_id=args.slot, token_label=args.token_label,
                credentials=credentials)


def _secret(file_option: str, env_option: str, file: Path | None, env: str | None) -> SecretRef | None:
    if file is not None:
        return SecretRef(file_option, file=file)
    if env is not None:
        return SecretRef(env_option, env=env)
    return None


def _result_line(cert: IssuedCertificate) -> str:
    """One stdout line per certificate; every field is the server's, so made printable."""
    parts = [f"{cert.cert_type}: serial {cert.serial}"]
    if cert.subject:
        parts.append(cert.subject)
    if cert.not_after:
        parts.append(f"valid until {cert.not_after}")
    if cert.status and cert.status != "installed":
        parts.append(cert.status)
    return printable(", ".join(parts))


def describe_failure(exc: OpenXPKIError) -> str:
    """The line (or two) the user sees; the server's own code and message, made printable.

    Only the hint (this module's own text) may start a second line: a newline
    in the server's message or a card's label is shown escaped.
    """
    if isinstance(exc, ServerRefused):
        text = printable(f"the server refused: {exc.message} [{exc.code}]")
        hint = HINTS.get(exc.code)
        if exc.code == "enroll.rate_limited" and exc.retry_after:
            hint = f"too many tries: wait {exc.retry_after:.0f} s, then run again"
        return f"{text}\n  {hint}" if hint else text
    if isinstance(exc, TokenError):
        # card.* codes are for the help desk too: shown, like the server's codes.
        code = f" [{exc.code}]" if exc.code.startswith("card.") else ""
        return printable(f"card problem: {exc.message}{code}")
    if isinstance(exc, ServerUnreachable):
        return printable(f"network problem: {exc.message}")
    if isinstance(exc, EnrollmentStopped):
        return printable(exc.message)
    if isinstance(exc, ForeignKeyRefused):
        return printable(f"refused: {exc.message} [{exc.code}]")
    return printable(f"failed: {exc.message}")


class _PrintableFormatter(logging.Formatter):
    """Log records (``-v``) quote server answers and card labels too."""

    def format(self, record: logging.LogRecord) -> str:
        # The message is one line; only a traceback after it may span lines.
        safe = logging.makeLogRecord({**record.__dict__, "msg": printable(record.getMessage()),
                                      "args": None})
        return printable(super().format(safe), multiline=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter(f"{PROG}: %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
                        handlers=[handler])
    try:
        if args.command == "register-handler":
            return cmd_register_handler(args)
        if args.command == "unblock":
            return cmd_unblock(args)
        return cmd_enroll(args)
    except OpenXPKIError as exc:
        print(f"{PROG}: {describe_failure(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; run the same command again to continue "
              "(nothing is issued twice)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
