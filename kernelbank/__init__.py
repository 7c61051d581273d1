"""kernelbank: convolutional autoregressive kernels and kernel banks, at scale.

The names here are the math layer (:mod:`kernelbank.core`): pure PyTorch/NumPy, no Ray
and no IO. The Ray stages live in :mod:`kernelbank.stages`, the scikit-learn estimators
in :mod:`kernelbank.sklearn`, the end-to-end model in :mod:`kernelbank.nn`.
"""

from .core import (Basis, ChannelBasis, ChannelFitResult, ClassStats, FitResult,
                   ImageStatistics, KernelBank, LikelihoodClassifier, ResidualDescriptors,
                   SingularGramWarning, WindowSums, ar_features, bank_feature_names_from_sums,
                   bank_features, bank_features_from_sums, channel_fit_from_sums,
                   describe_residuals, fit, fit_from_sums, image_statistics,
                   residual_descriptor_names, residual_features, sums_from_rows, sums_to_rows,
                   window_sums)

__version__ = "0.1.0"

__all__ = ["Basis", "ChannelBasis", "ChannelFitResult", "ClassStats", "FitResult",
           "ImageStatistics", "KernelBank", "LikelihoodClassifier", "ResidualDescriptors",
           "SingularGramWarning", "WindowSums", "ar_features", "bank_feature_names_from_sums",
           "bank_features", "bank_features_from_sums", "channel_fit_from_sums",
           "describe_residuals", "fit", "fit_from_sums", "image_statistics",
           "residual_descriptor_names", "residual_features", "sums_from_rows", "sums_to_rows",
           "window_sums", "__version__"]
