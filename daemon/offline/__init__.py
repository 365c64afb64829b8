"""The offline room: what ``refscope evaluate`` hands a person to read -- figures of an evaluation report.

Owns :func:`~refscope.daemon.offline.plot.plot_evaluation` (matplotlib, Agg backend, imported only when a figure
is drawn) and its atomic PNG writer. Imports :mod:`refscope.models` (the report) and :mod:`..atomic` only.
"""
from .plot import plot_evaluation, write_evaluation_plot

__all__ = ["plot_evaluation", "write_evaluation_plot"]
