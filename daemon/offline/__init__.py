"""The offline room: refscope's work without the service -- plain functions the command line calls.

:mod:`.files` (read frames, register and fit references, enhance and evaluate files), :mod:`.net` (the neural
commands: ``fit --method net``, ``train``, ``evaluate --model``), :mod:`.batch` with :mod:`.batch_compute` and
:mod:`.batch_files` (``refscope batch`` on Dask), :mod:`.bench` (serving speed), :mod:`.report` and :mod:`.plot`
(evaluation reports and their figure), :mod:`.progress` (terminal progress), :mod:`.demo` and :mod:`.live_demo`
(the demos) and :mod:`.simulate` (the simulated microscope). Imports the service room (the live demo runs a
daemon) and every room below it; only the command line imports it.
"""
from .plot import plot_evaluation, write_evaluation_plot

__all__ = ["plot_evaluation", "write_evaluation_plot"]
