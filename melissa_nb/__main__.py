"""The `melissa-nb` command (also `python -m melissa_nb`).

A server process catches its signals before anything else loads (typer, numpy, the settings):
SIGUSR1 in its first instant must not kill it, nor SIGTERM leave no trace.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the `melissa-nb` typer app."""
    if sys.argv[1:2] == ["server"]:
        from melissa_nb.server.signals import EarlySignals

        early = EarlySignals()
    else:
        early = None
    from melissa_nb.cli import run_app

    run_app(early)


if __name__ == "__main__":
    main()
