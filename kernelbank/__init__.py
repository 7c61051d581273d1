"""kernelbank: convolutional autoregressive kernels and kernel banks, at scale.

The math layer (:mod:`kernelbank.core`) imports neither Ray nor any IO library.
"""

from .core import Basis, FitResult, SingularGramWarning, fit

__version__ = "0.1.0"

__all__ = ["Basis", "FitResult", "SingularGramWarning", "fit", "__version__"]

from .core.bank import KernelBank  # noqa: E402
from .core.features import ar_features, bank_features  # noqa: E402
from .core.likelihood import LikelihoodClassifier  # noqa: E402
from .core.stats import ClassStats  # noqa: E402

__all__ += ["ClassStats", "KernelBank", "LikelihoodClassifier", "ar_features", "bank_features"]
