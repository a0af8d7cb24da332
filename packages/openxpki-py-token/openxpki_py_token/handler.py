"""The ``openxpki-py-token:`` URL: how the page hands the code to the agent.

The page links ``openxpki-py-token:enroll?server=<URL>&code=<CODE>``; on a
Linux desktop, ``openxpki-py-token register-handler --server URL`` installs a
``.desktop`` entry for that scheme (XDG, ``xdg-mime``), so a click starts
the agent in a terminal without the code being typed or read aloud.

Any web page can link such a URL, so the handler trusts the URL with the
code only: the server comes from the registration (``--server`` in the
entry's command line), and a URL naming another server, or anything but
exactly ``enroll?server=…&code=…``, is refused before anything is sent.
The user still types the card's PIN, which no link can do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

SCHEME = "openxpki-py-token"
MIME_TYPE = f"x-scheme-handler/{SCHEME}"
DESKTOP_FILE = f"{SCHEME}.desktop"
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
# Exec= arguments are written unquoted: only characters that need no quoting
# in a desktop entry (paths with spaces are refused rather than mis-quoted).
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_./:@+=,-]+$")


@dataclass(frozen=True)
class EnrollLink:
    server: str
    code: str


def parse_enroll_url(url: str) -> EnrollLink:
    """Server and code from ``openxpki-py-token:enroll?server=…&code=…``; UsageError for anything else."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme != SCHEME or parts.netloc or parts.fragment or parts.path.strip("/") != "enroll":
        raise UsageError(f"{url[:200]!r} is not an {SCHEME}:enroll?server=…&code=… link from the web page")
    try:
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=True,
                                      max_num_fields=4)
    except ValueError:
        raise UsageError("the link's query is not server=…&code=…") from None
    if sorted(query) != ["code", "server"] or any(len(values) != 1 for values in query.values()):
        raise UsageError("the link must carry exactly one server and one code, nothing else")
    server, code = query["server"][0], query["code"][0]
    if not _CODE.match(code):
        raise UsageError("the link's code is not an enrollment code")
    return EnrollLink(server, code)


def same_server(a: str, b: str) -> bool:
    """Whether two server URLs name the same place (case of scheme and host, a trailing slash aside)."""
    def norm(url: str) -> tuple[str, str, str]:
        p = urllib.parse.urlsplit(url.strip())
        return p.scheme.lower(), p.netloc.lower(), p.path.rstrip("/")
    return norm(a) == norm(b)


def desktop_entry(command: Sequence[str]) -> str:
    """The ``.desktop`` text that runs ``command`` with the URL appended, in a terminal (for the PIN)."""
    for arg in command:
        if not _PLAIN_ARG.match(arg):
            raise UsageError(f"{arg!r} cannot be written into a desktop entry unquoted; use a path without "
                             "spaces or special characters")
    exec_line = " ".join(arg.replace("%", "%%") for arg in command) + " --url %u"
    return ("[Desktop Entry]\n"
            "Type=Application\n"
            "Name=openxpki-py token agent\n"
            "Comment=Personalize your smartcard from the openxpki-py web page\n"
            f"Exec={exec_line}\n"
            "Terminal=true\n"
            "NoDisplay=true\n"
            f"MimeType={MIME_TYPE};\n")


def applications_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "applications"


def register_handler(command: Sequence[str]) -> Path:
    """Write the user's desktop entry and make it the scheme's default handler (``xdg-mime default``)."""
    xdg_mime = shutil.which("xdg-mime")
    if xdg_mime is None:
        raise UsageError("xdg-mime was not found: the URL handler needs a Linux desktop with xdg-utils; "
                         "run the command the web page shows instead")
    folder = applications_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DESKTOP_FILE
    tmp = path.with_name(f".{DESKTOP_FILE}.tmp")
    tmp.write_text(desktop_entry(command), encoding="utf-8")
    tmp.replace(path)
    done = subprocess.run([xdg_mime, "default", DESKTOP_FILE, MIME_TYPE], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise UsageError(f"xdg-mime default failed ({done.stderr.strip() or done.returncode})")
    database = shutil.which("update-desktop-database")
    if database is not None:  # some desktops only look at the cache; without the tool, xdg-mime suffices
        subprocess.run([database, str(folder)], capture_output=True, timeout=60, check=False)
    return path
