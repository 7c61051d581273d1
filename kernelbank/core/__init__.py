"""The math layer: pure PyTorch/NumPy, no Ray and no IO."""

from .basis import Basis
from .fit import FitResult, fit, normal_equations, normalize_images, pyramid_level
from .solve import SingularGramWarning, solve_normal_equations

__all__ = ["Basis", "FitResult", "fit", "normal_equations", "normalize_images",
           "pyramid_level", "solve_normal_equations", "SingularGramWarning"]
from .stats import ClassStats
from .bank import KernelBank

from .features import ar_features, bank_features

__all__ += ["ClassStats", "KernelBank", "ar_features", "bank_features"]
