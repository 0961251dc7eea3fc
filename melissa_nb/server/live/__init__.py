"""State that other processes read while the server runs: named, self-describing shared-memory
blocks with their read-only reader (`state`) and each rank's counters and rate-limited
rejection logs (`progress`). Imports only `errors`; every other part of the server, the study
runner and `melissa-nb status` build on it."""
