"""The math layer: pure PyTorch/NumPy, no Ray and no IO."""

from .bank import KernelBank
from .basis import Basis
from .channel_basis import ChannelBasis
from .channel_fit import ChannelFitResult, channel_fit_from_sums, fit_channels
from .features import ar_features, bank_features
from .fit import (FitResult, fit, normal_equations, normalize_images, pyramid_level,
                  residual_mse)
from .likelihood import LikelihoodClassifier
from .onepass import ImageStatistics, image_statistics
from .residual import (ResidualDescriptors, describe_residuals, residual_descriptor_names,
                       residual_features)
from .solve import SingularGramWarning, solve_normal_equations
from .stats import ClassStats
from .stats_features import bank_feature_names_from_sums, bank_features_from_sums
from .sums import WindowSums, window_sums
from .sums_fit import fit_from_sums, fit_result_from_sums, select_sums
from .sums_rows import sums_from_rows, sums_row_length, sums_to_rows

__all__ = ["Basis", "ChannelBasis", "ChannelFitResult", "ClassStats", "FitResult",
           "ImageStatistics", "KernelBank", "LikelihoodClassifier", "ResidualDescriptors",
           "SingularGramWarning", "WindowSums", "ar_features", "bank_feature_names_from_sums",
           "bank_features", "bank_features_from_sums", "channel_fit_from_sums",
           "describe_residuals", "fit", "fit_channels", "fit_from_sums", "fit_result_from_sums",
           "image_statistics", "normal_equations", "normalize_images", "pyramid_level",
           "residual_descriptor_names",
           "residual_features", "residual_mse", "select_sums", "solve_normal_equations",
           "sums_from_rows", "sums_row_length", "sums_to_rows", "window_sums"]
