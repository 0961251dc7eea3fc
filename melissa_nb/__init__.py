"""melissa_nb: the Melissa in-transit sensitivity analysis server, rebuilt with Numba, ZeroMQ and MPI."""

__version__ = "0.1.0"
