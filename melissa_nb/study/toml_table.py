"""A TOML table being read: typed getters whose errors name the key (`[section] key`) and say
what was expected, and a check that no key was left unread (a typo is an error, not a default)."""

from __future__ import annotations

import math
from typing import Any

from melissa_nb.errors import ConfigurationError

REQUIRED = object()
"""The default of a key that must be present."""


class TomlTable:
    """A TOML table being read: typed getters that name the key, and a check for leftovers."""

    def __init__(self, data: Any, section: str) -> None:
        if not isinstance(data, dict):
            raise ConfigurationError(f"[{section}] must be a table, got {data!r}")
        self.section = section
        self.data = dict(data)
        self.read: set[str] = set()

    def _where(self, key: str) -> str:
        return f"[{self.section}] {key}"

    def fail(self, key: str, expected: str, value: Any) -> ConfigurationError:
        """The error for `key`: where it is, what was expected, what was found."""
        return ConfigurationError(f"{self._where(key)}: expected {expected}, got {value!r}")

    def get(self, key: str, default: Any) -> Any:
        """The raw value of `key` (marked as read), `default` if absent; REQUIRED: must exist."""
        self.read.add(key)
        if key in self.data:
            return self.data[key]
        if default is REQUIRED:
            raise ConfigurationError(f"{self._where(key)} is missing (required)")
        return default

    def integer(self, key: str, default: Any = None, minimum: int = 0) -> int:
        """An integer >= `minimum`."""
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}", value)
        return value

    def number(
        self, key: str, default: Any = None, minimum: float = -math.inf, exclusive: bool = False
    ) -> float:
        """A finite number (int or float) above `minimum` (strictly when `exclusive`)."""
        value = self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < minimum
            or (exclusive and value == minimum)
        ):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            expected = "a finite number" + ("" if minimum == -math.inf else f" {bound}")
            raise self.fail(key, expected, value)
        return float(value)

    def text(self, key: str, default: Any = None, choices: tuple[str, ...] | None = None) -> str:
        """A non-empty string, one of `choices` when given."""
        value = self.get(key, default)
        if not isinstance(value, str) or not value or (choices and value not in choices):
            raise self.fail(
                key, f"one of {list(choices)}" if choices else "a non-empty string", value
            )
        return value

    def boolean(self, key: str, default: Any = None) -> bool:
        """true or false."""
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def array(self, key: str, default: Any = None) -> list[Any]:
        """A TOML array (items checked by the caller)."""
        value = self.get(key, default)
        if not isinstance(value, list):
            raise self.fail(key, "an array", value)
        return value

    def table(self, key: str) -> TomlTable:
        """A required sub-table."""
        return TomlTable(self.get(key, REQUIRED), key)

    def finish(self) -> None:
        """Reject keys nobody read: typos must not be silently ignored."""
        unknown = sorted(set(self.data) - self.read)
        if unknown:
            raise ConfigurationError(
                f"[{self.section}] unknown key {unknown[0]!r}; allowed keys: {sorted(self.read)}"
            )
