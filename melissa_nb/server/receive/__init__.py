"""The data path of one rank, from a frame's bytes to the kernels: `ingest` (`Ingest`: decode,
check, track, hand to the batch, fold), `waiting` (frames held until their simulation is known),
`members` (Sobol groups assembled from single members), `batches` (samples folded per slice and
timestep in one pass), `slices` and `segments` (the statistics of one client slice over one
shared-memory block), `tracking` (received timesteps, statuses, the completion rule) and
`restored` (what a restart hands in).

May import the kernels, `protocol`, `errors`, `partition`, `server.config`, `server.live` and
`server.pipeline.stages`; never the launcher, checkpoint or results sides (checkpoint/ reads
this package's state, not the other way round)."""
