"""The statistics server: one process per MPI rank (see docs/server.md)."""
