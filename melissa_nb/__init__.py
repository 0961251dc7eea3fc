"""melissa_nb: the Melissa in-transit sensitivity analysis server, rebuilt with Numba, ZeroMQ
and MPI."""

from typing import Any

from melissa_nb.version import __version__ as __version__

_EMBEDDED = ("MelissaServer", "ServerStatus", "SimulationData")


def __getattr__(name: str) -> Any:
    """`melissa_nb.MelissaServer` and friends, imported on first use (the server is heavy)."""
    if name in _EMBEDDED:
        from melissa_nb import embedded

        return getattr(embedded, name)
    raise AttributeError(f"module 'melissa_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EMBEDDED])
