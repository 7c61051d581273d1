"""The math layer: pure PyTorch/NumPy, no Ray and no IO.

One path for every channel count: a grey image is a one-channel image, and :func:`fit` is
the one pass over the pixels (own kernel, window sums, residual descriptors).
"""

from .bank import KernelBank
from .basis import Basis
from .features import (ar_features, bank_feature_names_from_sums, bank_features,
                       bank_features_from_sums)
from .fit import (FitResult, fit, fit_from_sums, fit_result_from_sums, image_statistics,
                  residual_features, select_sums)
from .images import normalize_images, pyramid_level
from .likelihood import LikelihoodClassifier
from .residual import ResidualDescriptors, describe_residuals, residual_descriptor_names
from .solve import SingularGramWarning, residual_mse, solve_normal_equations
from .stats import ClassStats
from .sums import WindowSums, window_sums
from .sums_rows import sums_from_rows, sums_row_length, sums_to_rows

# Deprecated names of the grey/colour split, kept so callers keep working: a Basis takes
# channels=, one FitResult serves every channel count, fit_result_from_sums any basis.
ChannelBasis = Basis
ChannelFitResult = FitResult
ImageStatistics = FitResult
channel_fit_from_sums = fit_result_from_sums
fit_channels = fit

__all__ = ["Basis", "ChannelBasis", "ChannelFitResult", "ClassStats", "FitResult",
           "ImageStatistics", "KernelBank", "LikelihoodClassifier", "ResidualDescriptors",
           "SingularGramWarning", "WindowSums", "ar_features", "bank_feature_names_from_sums",
           "bank_features", "bank_features_from_sums", "channel_fit_from_sums",
           "describe_residuals", "fit", "fit_channels", "fit_from_sums", "fit_result_from_sums",
           "image_statistics", "normalize_images", "pyramid_level",
           "residual_descriptor_names", "residual_features", "residual_mse", "select_sums",
           "solve_normal_equations", "sums_from_rows", "sums_row_length", "sums_to_rows",
           "window_sums"]
