"""The math layer: pure PyTorch/NumPy, no Ray and no IO."""

from .bank import KernelBank
from .basis import Basis
from .features import ar_features, bank_features
from .fit import (FitResult, fit, normal_equations, normalize_images, pyramid_level,
                  residual_mse)
from .likelihood import LikelihoodClassifier
from .solve import SingularGramWarning, solve_normal_equations
from .stats import ClassStats

__all__ = ["Basis", "ClassStats", "FitResult", "KernelBank", "LikelihoodClassifier",
           "SingularGramWarning", "ar_features", "bank_features", "fit", "normal_equations",
           "normalize_images", "pyramid_level", "residual_mse", "solve_normal_equations"]
