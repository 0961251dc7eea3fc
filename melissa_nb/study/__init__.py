"""The local study runner (`melissa-nb run`): study file, sampling, launcher, processes."""
