"""The `melissa-nb server` command line, built from ServerConfig's fields (their flags, help and
defaults are written once, in server/config.py).

`server_parameters()` gives the typer parameters the CLI declares; `config_from_options` turns
the parsed values into a ServerConfig; `parse_arguments` does both for an argument list (an
embedded server started with a launcher's command line). Colon lists (`-o mean:variance`) and
paths are strings on the command line.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from melissa_nb.errors import ConfigurationError
from melissa_nb.server.config import ServerConfig

COLON_LISTS = {
    "operations": str,
    "thresholds": float,
    "quantiles": float,
    "field_names": str,
    "parameter_names": str,
    "grid_shape": int,
    "chaos_laws": str,
    "chaos_fields": str,
    "chaos_timesteps": int,
}
"""Fields given as colon lists, with the type of their items."""
_SCALARS = {"int": int, "float": float, "str": str, "Path": str, "bool": bool}


def parse_colon_list(text: str | None, option: str, kind: type = str) -> tuple:
    """Split Melissa's colon-separated option value ("mean:variance") into a typed tuple."""
    if text is None or text.strip() == "":
        return ()
    items = [item.strip() for item in text.split(":")]
    if any(item == "" for item in items):
        raise ConfigurationError(f"{option}: empty item in colon list {text!r}")
    try:
        return tuple(kind(item) for item in items)
    except ValueError as error:
        raise ConfigurationError(f"{option}: cannot read {text!r} as {kind.__name__}s") from error


def _command_line_type(annotation: str) -> type:
    """The type an option's value has on the command line (a field's annotation is a string)."""
    return _SCALARS[annotation.replace(" | None", "")]


def _command_line_default(name: str, default: Any) -> Any:
    if default is MISSING:
        return ...
    if name in COLON_LISTS:
        return ":".join(str(item) for item in default) or None
    if isinstance(default, Path):
        return str(default)
    return default


def server_parameters() -> list[inspect.Parameter]:
    """One typer option per command-line field of ServerConfig, in field order."""
    import typer

    parameters = []
    for item in fields(ServerConfig):
        if "flags" not in item.metadata:
            continue
        kind = str if item.name in COLON_LISTS else _command_line_type(str(item.type))
        parameters.append(
            inspect.Parameter(
                item.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(
                    _command_line_default(item.name, item.default),
                    *item.metadata["flags"],
                    help=item.metadata["help"],
                ),
                annotation=kind,
            )
        )
    return parameters


def config_from_options(options: dict[str, Any]) -> ServerConfig:
    """The ServerConfig of the parsed options (ConfigurationError if bad)."""
    values = dict(options)
    for name, kind in COLON_LISTS.items():
        flags = [flag for flag in _flags(name) if flag.startswith("-")]
        values[name] = parse_colon_list(values[name], "/".join(flags[:2]), kind)
    return ServerConfig(**values)


def _flags(name: str) -> tuple[str, ...]:
    return next(item.metadata["flags"] for item in fields(ServerConfig) if item.name == name)


def parse_arguments(arguments: Sequence[str]) -> ServerConfig:
    """A ServerConfig from `melissa-nb server`'s command-line arguments (ConfigurationError on
    an unknown option or a bad value, with click's message)."""
    import typer

    def server(**options: Any) -> None:
        """Parse only."""

    server.__signature__ = inspect.Signature(server_parameters())  # type: ignore[attr-defined]
    app = typer.Typer(add_completion=False)
    app.command()(server)
    click_command = typer.main.get_command(app)
    try:
        with click_command.make_context("melissa-nb server", list(arguments)) as context:
            options = dict(context.params)
    except Exception as error:  # click's usage errors (typer >= 0.26 vendors click)
        describe = getattr(error, "format_message", None)
        if describe is None:
            raise
        raise ConfigurationError(describe()) from None
    return config_from_options(options)
