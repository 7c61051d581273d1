"""Built-in datasets: real texture patches and synthetic textures with known AR kernels.

* :mod:`~kernelbank.datasets.textures` cuts the texture photographs scikit-image ships
  into train/test patches split by position (no leakage between splits).
* :mod:`~kernelbank.datasets.synthetic` simulates Gaussian Markov random fields
  (conditional AR models) exactly, so the kernel that generated an image is known.
* :mod:`~kernelbank.datasets.vector_gmrf` does the same for several channels (a vector
  kernel, multivariate GMRFs).

Names are imported on first use (PEP 562 ``__getattr__``): finding the built-in textures
(``ensure_textures``, what ``kernelbank run`` does first) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_MODULES = {
    **dict.fromkeys(["gmrf_spectral_density", "make_synthetic_dataset", "random_stable_kernel",
                     "simulate_gmrf", "write_synthetic_dataset"], "synthetic"),
    **dict.fromkeys(["COLOUR_CLASSES", "TEXTURE_CLASSES", "ensure_textures",
                     "load_texture_image", "load_textures", "texture_patch_positions",
                     "write_textures"], "textures"),
    **dict.fromkeys(["random_stable_vector_kernel", "simulate_vector_gmrf",
                     "vector_gmrf_residual_covariance", "vector_gmrf_spectral_density"],
                    "vector_gmrf"),
}
__all__ = sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))
