"""Typed, path-aware reading of a YAML mapping.

Every section parser in the project reads its part of the instance config
through a :class:`Reader`, so every error names the full key
(``ca.key.token_label``), what was expected and what was found, and unknown
keys (usually typos) are refused instead of silently ignored.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

from openxpki_py_token.secret import SecretRef

from .errors import ConfigError

_MISSING: Any = object()
_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)  # a choice: str or a Literal of the options


def _describe(value: object) -> str:
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Reader:
    """A view of one mapping inside the config, with its dotted path."""

    def __init__(self, data: object, path: builtins.str = "", base_dir: Path | None = None) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path or 'config'}: expected a mapping, got {_describe(data)}")
        self.data: Mapping[builtins.str, Any] = data
        self.path = path
        self.base_dir = base_dir or Path.cwd()
        self._seen: set[builtins.str] = set()

    def key_path(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: builtins.str, expected: builtins.str) -> ConfigError:
        value = self.data.get(key)
        return ConfigError(f"{self.key_path(key)}: expected {expected}, got {_describe(value)}")

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.data and self.data[key] is not None

    def _get(self, key: builtins.str, default: Any) -> Any:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is _MISSING:
                raise ConfigError(f"{self.key_path(key)}: required key is missing")
            return default
        return self.data[key]

    def raw(self, key: builtins.str, default: Any = _MISSING) -> Any:
        return self._get(key, default)

    @overload
    def str(self, key: builtins.str) -> builtins.str: ...
    @overload
    def str(self, key: builtins.str, default: _T) -> builtins.str | _T: ...

    def str(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "a non-empty string")
        return value

    @overload
    def int(self, key: builtins.str, *, minimum: builtins.int | None = None, maximum: builtins.int | None = None) -> builtins.int: ...
    @overload
    def int(self, key: builtins.str, default: _T, *, minimum: builtins.int | None = None, maximum: builtins.int | None = None) -> builtins.int | _T: ...

    def int(self, key: builtins.str, default: Any = _MISSING, *, minimum: builtins.int | None = None,
            maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, "an integer")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.error(key, f"an integer {bounds}")
        return value

    @overload
    def float(self, key: builtins.str, *, minimum: builtins.float | None = None) -> builtins.float: ...
    @overload
    def float(self, key: builtins.str, default: _T, *, minimum: builtins.float | None = None) -> builtins.float | _T: ...

    def float(self, key: builtins.str, default: Any = _MISSING, *, minimum: builtins.float | None = None) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, "a number")
        if minimum is not None and value < minimum:
            raise self.error(key, f"a number >= {minimum}")
        return float(value)

    @overload
    def bool(self, key: builtins.str) -> builtins.bool: ...
    @overload
    def bool(self, key: builtins.str, default: _T) -> builtins.bool | _T: ...

    def bool(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value

    @overload
    def choice(self, key: builtins.str, options: Iterable[_S]) -> _S: ...
    @overload
    def choice(self, key: builtins.str, options: Iterable[_S], default: _T) -> _S | _T: ...

    def choice(self, key: builtins.str, options: Iterable[builtins.str], default: Any = _MISSING) -> Any:
        options = tuple(options)
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if value not in options:
            raise self.error(key, "one of " + ", ".join(options))
        return value

    @overload
    def filepath(self, key: builtins.str, *, must_exist: builtins.bool = False) -> Path: ...
    @overload
    def filepath(self, key: builtins.str, default: _T, *, must_exist: builtins.bool = False) -> Path | _T: ...

    def filepath(self, key: builtins.str, default: Any = _MISSING, *, must_exist: builtins.bool = False) -> Any:
        """A file system path; relative paths are taken from the config file's folder."""
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or not value:
            raise self.error(key, "a file system path")
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.exists():
            raise ConfigError(f"{self.key_path(key)}: {path} does not exist")
        return path

    @overload
    def str_list(self, key: builtins.str) -> list[builtins.str]: ...
    @overload
    def str_list(self, key: builtins.str, default: _T) -> list[builtins.str] | _T: ...

    def str_list(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, "a list of strings")
        return list(value)

    @overload
    def str_map(self, key: builtins.str) -> dict[builtins.str, builtins.str]: ...
    @overload
    def str_map(self, key: builtins.str, default: _T) -> dict[builtins.str, builtins.str] | _T: ...

    def str_map(self, key: builtins.str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error(key, "a mapping of strings to strings")
        return dict(value)

    def section(self, key: builtins.str, *, required: builtins.bool = False) -> Reader:
        value = self._get(key, _MISSING if required else {})
        return Reader(value, self.key_path(key), self.base_dir)

    def sections(self, key: builtins.str) -> dict[builtins.str, Reader]:
        """A mapping of names to sub-mappings (e.g. ``profiles``)."""
        value = self._get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, "a mapping of names to sections")
        return {
            str(name): Reader(sub, f"{self.key_path(key)}.{name}", self.base_dir)
            for name, sub in value.items()
        }

    @overload
    def secret(self, stem: builtins.str, *, required: Literal[True] = True) -> SecretRef: ...
    @overload
    def secret(self, stem: builtins.str, *, required: builtins.bool) -> SecretRef | None: ...

    def secret(self, stem: builtins.str, *, required: builtins.bool = True) -> SecretRef | None:
        """A secret named by ``<stem>_file`` or ``<stem>_env``, never inline.

        The value itself is read only when used, so it never sits in a config
        object that could be logged or dumped.
        """
        file_key, env_key = f"{stem}_file", f"{stem}_env"
        if stem in self.data:
            raise ConfigError(
                f"{self.key_path(stem)}: secrets are never written into the config; "
                f"use {file_key} (a file readable only by the service) or {env_key}"
            )
        has_file, has_env = self.has(file_key), self.has(env_key)
        if has_file and has_env:
            raise ConfigError(f"{self.key_path(file_key)}: give either {file_key} or {env_key}, not both")
        if has_file:
            return SecretRef(self.key_path(file_key), file=self.filepath(file_key))
        if has_env:
            return SecretRef(self.key_path(env_key), env=self.str(env_key))
        if required:
            raise ConfigError(f"{self.key_path(file_key)}: required key is missing (or give {env_key})")
        return None

    def finish(self) -> None:
        """Refuse keys nobody read: they are usually typos."""
        unknown = sorted(set(map(str, self.data)) - self._seen)
        if unknown:
            raise ConfigError(
                f"{self.key_path(unknown[0])}: unknown key"
                + (f" (also: {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
            )
