"""Built-in datasets: real texture patches and synthetic textures with known AR kernels.

* :mod:`~kernelbank.datasets.textures` cuts the texture photographs scikit-image ships
  into train/test patches split by position (no leakage between splits).
* :mod:`~kernelbank.datasets.synthetic` simulates Gaussian Markov random fields
  (conditional AR models) exactly, so the kernel that generated an image is known.
* :mod:`~kernelbank.datasets.vector_gmrf` does the same for several channels (a vector
  kernel, multivariate GMRFs).
"""

from .synthetic import (gmrf_spectral_density, make_synthetic_dataset, random_stable_kernel,
                        simulate_gmrf, write_synthetic_dataset)
from .textures import (COLOUR_CLASSES, TEXTURE_CLASSES, ensure_textures, load_texture_image,
                       load_textures, texture_patch_positions, write_textures)
from .vector_gmrf import (random_stable_vector_kernel, simulate_vector_gmrf,
                          vector_gmrf_residual_covariance, vector_gmrf_spectral_density)

__all__ = ["COLOUR_CLASSES", "TEXTURE_CLASSES", "ensure_textures", "gmrf_spectral_density",
           "load_texture_image", "load_textures", "make_synthetic_dataset",
           "random_stable_kernel", "random_stable_vector_kernel", "simulate_gmrf",
           "simulate_vector_gmrf", "texture_patch_positions", "vector_gmrf_residual_covariance",
           "vector_gmrf_spectral_density", "write_synthetic_dataset", "write_textures"]
