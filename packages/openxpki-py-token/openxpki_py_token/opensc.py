"""Where OpenSC's PKCS#11 module is on this computer.

The agent runs on users' PCs, not on the server: the module's path depends
on the operating system, the distribution and the CPU.  ``--module`` or
``$OPENXPKI_PY_TOKEN_MODULE`` name it explicitly (a vendor's module, Yubico's
ykcs11, SoftHSM in tests); otherwise the usual places are tried in order and
a miss names every path that was tried.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import TokenModuleError

MODULE_ENV = "OPENXPKI_PY_TOKEN_MODULE"

# Debian/Ubuntu install per multiarch triplet (and keep a compatibility copy
# in /usr/lib); Fedora/RHEL/SUSE use lib64 on 64-bit systems.
_MULTIARCH = {
    "x86_64": "x86_64-linux-gnu",
    "amd64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
    "armv7l": "arm-linux-gnueabihf",
    "i686": "i386-linux-gnu",
    "i386": "i386-linux-gnu",
    "ppc64le": "powerpc64le-linux-gnu",
    "s390x": "s390x-linux-gnu",
    "riscv64": "riscv64-linux-gnu",
}


def candidate_paths(system: str | None = None, machine: str | None = None,
                    environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where OpenSC's module usually is on ``system``/``machine`` (default: this computer)."""
    system = system or sys.platform
    machine = (machine or platform.machine()).lower()
    env = os.environ if environ is None else environ
    if system.startswith("win"):
        roots = [env.get("ProgramW6432"), env.get("ProgramFiles"), r"C:\Program Files"]
        seen: list[Path] = []
        for root in roots:
            if root:
                path = Path(root) / "OpenSC Project" / "OpenSC" / "pkcs11" / "opensc-pkcs11.dll"
                if path not in seen:
                    seen.append(path)
        # The installer also puts a copy on the system path.
        system_root = env.get("SystemRoot", r"C:\Windows")
        seen.append(Path(system_root) / "System32" / "opensc-pkcs11.dll")
        return seen
    if system == "darwin":
        return [Path("/Library/OpenSC/lib/opensc-pkcs11.so"),
                Path("/opt/homebrew/lib/opensc-pkcs11.so"),  # Homebrew on Apple silicon
                Path("/usr/local/lib/opensc-pkcs11.so")]     # Homebrew on Intel, MacPorts
    paths: list[Path] = []
    triplet = _MULTIARCH.get(machine)
    if triplet:
        paths.append(Path(f"/usr/lib/{triplet}/opensc-pkcs11.so"))
    paths += [Path("/usr/lib64/opensc-pkcs11.so"),                 # Fedora, RHEL, SUSE (64-bit)
              Path("/usr/lib64/pkcs11/opensc-pkcs11.so"),
              Path("/usr/lib/opensc-pkcs11.so"),                   # Arch, Alpine, 32-bit RPM
              Path("/usr/lib/pkcs11/opensc-pkcs11.so"),
              Path("/usr/local/lib/opensc-pkcs11.so")]             # built from source
    return paths


def find_module(explicit: str | os.PathLike[str] | None = None, *,
                candidates: Sequence[Path] | None = None,
                environ: Mapping[str, str] | None = None) -> Path:
    """The module to load: ``explicit``, else ``$OPENXPKI_PY_TOKEN_MODULE``, else the first that exists.

    An explicit path (argument or environment) is used as given, or refused
    when it does not exist; the search is only for the default.
    """
    env = os.environ if environ is None else environ
    for given, origin in ((explicit, "--module"), (env.get(MODULE_ENV), f"${MODULE_ENV}")):
        if given:
            path = Path(given)
            if not path.is_file():
                raise TokenModuleError(f"{origin}: PKCS#11 module {path} does not exist")
            return path
    tried = list(candidates) if candidates is not None else candidate_paths(environ=env)
    for path in tried:
        if path.is_file():
            return path
    raise TokenModuleError(
        "OpenSC's PKCS#11 module was not found (tried: " + ", ".join(str(p) for p in tried) + "); "
        f"install OpenSC, or name the card's module with --module PATH or ${MODULE_ENV}")
