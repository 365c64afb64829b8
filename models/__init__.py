"""refscope.models — the pure image science: registration, paired library, NLM, metrics, evaluation.

Arrays in, arrays out: nothing here reads files, opens sockets or starts threads.
"""
from .errors import ImageError, LibraryError, RefscopeModelError, RegistrationError
from .evaluation import EvaluationReport, evaluate_pair
from .library import LibraryConfig, PairedLibrary
from .metrics import QualityScores, score_all
from .nlm import PairedConfig
from .pipeline import METHODS, FitConfig, FittedModel, IntensityScale, enhance, fit, fit_library
from .registration import PairGeometry, register_global

__all__ = [
    "ImageError", "LibraryError", "RefscopeModelError", "RegistrationError",
    "EvaluationReport", "evaluate_pair", "LibraryConfig", "PairedLibrary", "QualityScores", "score_all",
    "PairedConfig", "METHODS", "FitConfig", "FittedModel", "IntensityScale", "enhance", "fit", "fit_library",
    "PairGeometry", "register_global",
]
