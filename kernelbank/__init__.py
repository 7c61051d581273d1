"""kernelbank: convolutional autoregressive kernels and kernel banks, at scale.

The names here are the math layer (:mod:`kernelbank.core`): pure PyTorch/NumPy, no Ray
and no IO. The Ray stages live in :mod:`kernelbank.stages`, the scikit-learn estimators
in :mod:`kernelbank.sklearn`, the end-to-end model in :mod:`kernelbank.nn`.

Every name is imported on first use (PEP 562 ``__getattr__``): ``import kernelbank`` and
the I/O, write, progress, reduce and classify code that Ray workers run import no torch
(about a second and 300 MB per worker process); ``kernelbank.fit`` and the other math
names import it when first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Names of :mod:`kernelbank.core` re-exported here (resolved through core's own table).
_CORE_NAMES = (
    "Basis", "ChannelBasis", "ChannelFitResult", "ClassStats", "FitResult",
    "ImageStatistics", "KernelBank", "LikelihoodClassifier", "ResidualDescriptors",
    "SingularGramWarning", "WindowSums", "ar_features", "bank_feature_names_from_sums",
    "bank_features", "bank_features_from_sums", "channel_fit_from_sums",
    "describe_residuals", "fit", "fit_from_sums", "fit_result_from_sums", "image_statistics",
    "residual_descriptor_names", "residual_features", "spectral_invariants",
    "spectrum_operator", "sums_from_rows", "sums_to_rows", "window_sums",
)

__all__ = [*_CORE_NAMES, "__version__"]


def __getattr__(name: str) -> Any:
    """Resolve a math-layer name, or a subpackage (``kb.core``, ``kb.io``…), on first use."""
    if name in _CORE_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.core"), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CORE_NAMES))


if TYPE_CHECKING:                               # static analysers and IDEs see every name
    from .core import (Basis, ChannelBasis, ChannelFitResult, ClassStats,  # noqa: F401
                       FitResult, ImageStatistics, KernelBank, LikelihoodClassifier,
                       ResidualDescriptors, SingularGramWarning, WindowSums, ar_features,
                       bank_feature_names_from_sums, bank_features, bank_features_from_sums,
                       channel_fit_from_sums, describe_residuals, fit, fit_from_sums,
                       fit_result_from_sums, image_statistics, residual_descriptor_names,
                       residual_features, sums_from_rows, sums_to_rows, window_sums)
