"""The math layer: pure PyTorch/NumPy, no Ray and no IO."""

from .bank import KernelBank
from .basis import Basis
from .features import ar_features, bank_features
from .fit import (FitResult, fit, normal_equations, normalize_images, pyramid_level,
                  residual_mse)
from .likelihood import LikelihoodClassifier
from .residual import (ResidualDescriptors, describe_residuals, residual_descriptor_names,
                       residual_features)
from .solve import SingularGramWarning, solve_normal_equations
from .stats import ClassStats

__all__ = ["Basis", "ClassStats", "FitResult", "KernelBank", "LikelihoodClassifier",
           "ResidualDescriptors", "SingularGramWarning", "ar_features", "bank_features",
           "describe_residuals", "fit", "normal_equations", "normalize_images", "pyramid_level",
           "residual_descriptor_names", "residual_features", "residual_mse",
           "solve_normal_equations"]
