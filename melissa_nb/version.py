"""The package version (one definition: the CLI, the result files and the build read it)."""

__version__ = "0.1.0"
