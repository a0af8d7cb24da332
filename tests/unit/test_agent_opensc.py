"""Finding OpenSC's PKCS#11 module on the user's PC (``openxpki_py_token.opensc``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpki_py_token.errors import TokenModuleError
from openxpki_py_token.opensc import MODULE_ENV, candidate_paths, find_module


@pytest.mark.parametrize(("system", "machine", "expected_first"), [
    ("linux", "x86_64", "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"),
    ("linux", "aarch64", "/usr/lib/aarch64-linux-gnu/opensc-pkcs11.so"),
    ("darwin", "arm64", "/Library/OpenSC/lib/opensc-pkcs11.so"),
])
def test_first_candidate_per_platform(system: str, machine: str, expected_first: str) -> None:
    assert str(candidate_paths(system, machine, environ={})[0]) == expected_first


def test_fedora_and_windows_paths_are_tried() -> None:
    assert Path("/usr/lib64/opensc-pkcs11.so") in candidate_paths("linux", "x86_64", environ={})
    windows = candidate_paths("win32", "AMD64", environ={"ProgramFiles": r"C:\Program Files"})
    assert any(str(p).endswith("opensc-pkcs11.dll") and "OpenSC Project" in str(p) for p in windows)


def test_explicit_module_wins_over_environment(tmp_path: Path) -> None:
    given, from_env = tmp_path / "vendor.so", tmp_path / "env.so"
    given.write_bytes(b"")
    from_env.write_bytes(b"")
    assert find_module(given, environ={MODULE_ENV: str(from_env)}) == given
    assert find_module(None, environ={MODULE_ENV: str(from_env)}) == from_env


def test_missing_explicit_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenModuleError, match=r"--module: PKCS#11 module .*nothing\.so does not exist"):
        find_module(tmp_path / "nothing.so", environ={})
    with pytest.raises(TokenModuleError, match=rf"\${MODULE_ENV}: PKCS#11 module"):
        find_module(None, environ={MODULE_ENV: str(tmp_path / "gone.so")})


def test_search_takes_the_first_existing_and_names_all_it_tried(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "opensc-pkcs11.so", tmp_path / "b" / "opensc-pkcs11.so"
    second.parent.mkdir()
    second.write_bytes(b"")
    assert find_module(candidates=[first, second], environ={}) == second
    with pytest.raises(TokenModuleError) as refused:
        find_module(candidates=[first], environ={})
    assert str(first) in str(refused.value) and "--module" in str(refused.value)


def test_this_machine_finds_debians_opensc() -> None:
    # contrib/install/debian-deps.sh installs OpenSC: the default must find it here.
    assert find_module(environ={}) == Path("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
