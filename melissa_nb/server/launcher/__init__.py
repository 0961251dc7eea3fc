"""The server's side of everything that is not data: the launcher link of Melissa 0.6 (`link`:
SUB, PUSH, REQ, never blocking the loop), the control endpoint on rank 0 (`control`: status,
checkpoint, stop, behind the study's secret) and whole-request reading for REP sockets
(`requests`). May import `protocol`, `errors`, `server.config` and `server.live`; knows nothing
of statistics."""
