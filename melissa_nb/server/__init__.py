"""The statistics server: one process per MPI rank (docs/server.md, docs/architecture.md).

A data frame goes socket -> `receive/` (checks, tracking, batches, kernels) -> shared-memory
state (`live/`) -> netCDF (`results/`); `launcher/` talks to the launcher and answers the control
endpoint, `pipeline/` hands accepted data to user stages and downstream consumers,
`checkpoint/` writes the rank's state to disk and takes it back.

The top level is the process itself: `config.py` and `options.py` (every setting, the command
line), `signals.py` (caught from the first instant), `startup.py` (claim, sockets, restart,
server.json), `loop.py` (`ServerRank`: the poll loop wiring every subpackage), `claim.py` (a
rank's lock on its study) and `ranks.py` (the MPI world: start-up gather, end vote, writing in
turn). Subpackages may import `config`, `ranks` and `claim`; nothing below imports `loop` or
`startup`.
"""
