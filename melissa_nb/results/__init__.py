"""A study's results read back: loading the netCDF files (`fields`), the summary (`summary`),
the figures (`plots`, matplotlib only there) and the `melissa-nb results` command (`command`).
Reads files only: imports nothing of the server or the runner."""

from melissa_nb.results.command import INSTALL_PLOTS, show_results
from melissa_nb.results.fields import FieldResults, load_field
from melissa_nb.results.summary import field_summaries

__all__ = ["INSTALL_PLOTS", "FieldResults", "field_summaries", "load_field", "show_results"]
