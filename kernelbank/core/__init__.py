"""The math layer: pure PyTorch/NumPy, no Ray and no IO.

One path for every channel count: a grey image is a one-channel image, and :func:`fit` is
the one pass over the pixels (own kernel, window sums, residual descriptors).

Names are imported on first use (PEP 562): ``import kernelbank.core`` costs nothing, and
a module that needs one numpy-only helper (``kernelbank.core.ridge``) does not import
torch through this package. :data:`_MODULES` lists the public names of each submodule.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

#: Submodule of ``kernelbank.core`` -> the public names it defines.
_MODULES: dict[str, tuple[str, ...]] = {
    "bank": ("KernelBank",),
    "basis": ("Basis",),
    "features": ("ar_features", "bank_feature_names_from_sums", "bank_features",
                 "bank_features_from_sums"),
    "fit": ("FitResult", "fit", "fit_from_sums", "fit_result_from_sums", "image_statistics",
            "residual_features", "select_sums"),
    "images": ("normalize_images", "pyramid_level"),
    "likelihood": ("LikelihoodClassifier",),
    "residual": ("ResidualDescriptors", "describe_residuals", "residual_descriptor_names"),
    "solve": ("SingularGramWarning", "residual_mse", "solve_normal_equations"),
    "spectrum": ("spectral_invariant_names", "spectral_invariants", "spectrum_operator"),
    "stats": ("ClassStats",),
    "sums": ("WindowSums", "window_sums"),
    "sums_rows": ("sums_from_rows", "sums_row_length", "sums_to_rows"),
}
#: Public name -> submodule that defines it.
_EXPORTS: dict[str, str] = {name: module for module, names in _MODULES.items()
                            for name in names}

#: Deprecated names of the grey/colour split -> the name they stand for now: a Basis takes
#: ``channels=``, one FitResult serves every channel count, fit_result_from_sums any basis.
_ALIASES: dict[str, str] = {
    "ChannelBasis": "Basis",
    "ChannelFitResult": "FitResult",
    "ImageStatistics": "FitResult",
    "channel_fit_from_sums": "fit_result_from_sums",
    "fit_channels": "fit",
}

__all__ = sorted([*_EXPORTS, *_ALIASES])


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` (or the submodule ``name``) on first use."""
    target = _ALIASES.get(name, name)
    module = _EXPORTS.get(target)
    if module is None:
        try:                                    # kb.core.features, kb.core.gram, ...
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), target)
    globals()[name] = value                     # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: importing the submodule ``fit`` (by any path) must not
    replace the function ``fit`` — the import system sets every submodule as an
    attribute of its package, which the eager ``from .fit import fit`` used to undo."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _EXPORTS \
                and value.__name__ == f"{__name__}.{name}":
            return                      # keep resolving the exported name through __getattr__
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:                               # static analysers and IDEs see every name
    from .bank import KernelBank  # noqa: F401
    from .basis import Basis  # noqa: F401
    from .features import (ar_features, bank_feature_names_from_sums,  # noqa: F401
                           bank_features, bank_features_from_sums)
    from .fit import (FitResult, fit, fit_from_sums, fit_result_from_sums,  # noqa: F401
                      image_statistics, residual_features, select_sums)
    from .images import normalize_images, pyramid_level  # noqa: F401
    from .likelihood import LikelihoodClassifier  # noqa: F401
    from .residual import (ResidualDescriptors, describe_residuals,  # noqa: F401
                           residual_descriptor_names)
    from .solve import SingularGramWarning, residual_mse, solve_normal_equations  # noqa: F401
    from .stats import ClassStats  # noqa: F401
    from .sums import WindowSums, window_sums  # noqa: F401
    from .sums_rows import sums_from_rows, sums_row_length, sums_to_rows  # noqa: F401
