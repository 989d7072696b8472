"""Typed readers over the environment; every failure is one line naming the variable.

`SettingsError` is the one error of the settings layer: str() is `NAME: problem`, never the
value (it may be a secret pasted in the wrong place).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping


class SettingsError(ValueError):
    """A missing or malformed setting. str() is one line that names the variable."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


class Env:
    """Typed readers over an environment mapping; each failure names its variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str | None:
        """The value without surrounding blanks, or None when unset or blank."""
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def required(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            raise SettingsError(name, "is required but not set")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if not re.fullmatch(r"\d+", value):
            raise SettingsError(name, "must be a whole number")
        number = int(value)
        if not minimum <= number <= maximum:
            raise SettingsError(name, f"must be between {minimum} and {maximum}, got {number}")
        return number

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise SettingsError(name, "must be a number of seconds") from None
        if not minimum <= number <= maximum:
            raise SettingsError(name, f"must be between {minimum:g} and {maximum:g}")
        return number

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off"):
            return False
        raise SettingsError(name, "must be true or false")

    def file(self, name: str) -> str | None:
        """A path that must name a readable file, or None when unset."""
        path = self.raw(name)
        if path is not None and not os.path.isfile(path):
            raise SettingsError(name, f"{path} is not a readable file")
        return path
