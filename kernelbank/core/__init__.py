"""The math layer: pure PyTorch/NumPy, no Ray and no IO."""

from .basis import Basis
from .fit import FitResult, fit, normal_equations, normalize_images, pyramid_level
from .solve import SingularGramWarning, solve_normal_equations

__all__ = ["Basis", "FitResult", "fit", "normal_equations", "normalize_images",
           "pyramid_level", "solve_normal_equations", "SingularGramWarning"]

from .bank import KernelBank
from .features import ar_features, bank_features
from .likelihood import LikelihoodClassifier
from .stats import ClassStats

__all__ += ["ClassStats", "KernelBank", "LikelihoodClassifier", "ar_features", "bank_features"]
