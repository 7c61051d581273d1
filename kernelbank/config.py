"""Configuration of the distributed pipeline: one frozen dataclass per stage.

Strings from the command line become Enums and validated values here, at the edge;
the stages below only see these objects. Every Ray resource setting (batch size,
actors, GPUs, threads) lives in a stage config, nowhere else.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

__all__ = ["BasisKind", "BankMethod", "Channels", "InputFormat", "ReadConfig", "FitConfig",
           "ReduceConfig", "FeatureConfig", "FEATURE_GROUPS", "DEFAULT_FEATURE_GROUPS",
           "OWN_KERNEL_FORMS", "ClassifierHead", "ClassifyConfig", "PipelineConfig"]


class BasisKind(str, enum.Enum):
    """Which AR basis the fit stage uses (see :class:`kernelbank.Basis`)."""

    ISOTROPIC = "isotropic"
    FULL = "full"


class Channels(str, enum.Enum):
    """Which bands of each image the pipeline models (``--channels``).

    ``LUMINANCE`` turns colour into one grey channel (the default, see
    :mod:`kernelbank.io.decode`); ``RGB`` keeps three channels (grey images replicated,
    alpha dropped); ``ALL`` keeps every band of each image as stored (the run's channel
    count is that of its first decodable record; other counts are error rows).
    """

    LUMINANCE = "luminance"
    RGB = "rgb"
    ALL = "all"


class BankMethod(str, enum.Enum):
    """How the reduce stage turns class statistics into a kernel bank."""

    POOLED = "pooled"
    PCA = "pca"
    KMEANS = "kmeans"


class InputFormat(str, enum.Enum):
    """Layout of the input URL (see :mod:`kernelbank.io.manifest`).

    ``AUTO`` picks packed shards (a ``_manifest.json``), then image files, then Parquet,
    then ``.tar`` shards.
    """

    AUTO = "auto"
    FOLDER = "folder"
    PARQUET = "parquet"
    TAR = "tar"


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ReadConfig:
    """How to read and decode the input images.

    Parameters
    ----------
    url : str
        Image folder (``root/<class>/…`` or ``root/<split>/<class>/…``), Parquet file or
        folder, on any fsspec URL (local path, ``s3://``, ``gs://``).
    s3_endpoint : str, optional
        S3-compatible endpoint; default: the ``AWS_ENDPOINT_URL`` environment variable.
    format : InputFormat, default=AUTO
    image_column, label_column, split_column, id_column : str
        Column names for Parquet input; ``split_column``/``id_column`` may be absent.
    ndim : {2, 3}, default=2
        2 for images, 3 for ``.npy`` volumes.
    channels : Channels, default=LUMINANCE
        Bands kept per image (2-D images only): luminance (one channel), ``rgb`` or
        ``all`` (see :class:`Channels`).
    n_channels : int, optional
        With ``channels=ALL``: the channel count every record must have (the fit stage
        sets it from the first record); records of another count are error rows.
    min_side : int, default=1
        Images with a side shorter than this become error rows (the fit stage sets it
        to the window size at the largest dilation).
    override_num_blocks : int, optional
        Least number of read blocks (read parallelism); default: as many as the block
        size limits give.
    max_pixels : int, default=64_000_000
        Records with more pixels (width x height, or voxels) are error rows; checked
        from the header, before decoding.
    max_bytes : int, default=1 GiB
        Largest decoded ``.npy``/TIFF and largest object fetched at all.
    fetch_concurrency : int, default=32
        GETs in flight inside each read task.
    read_attempts : int, default=8
        Attempts per request when the store throttles or times out (backoff between).
    block_bytes : int, default=64 MiB
        Encoded bytes per read block (one Ray task); blocks also stop at ``block_rows``.
    block_rows : int, default=4096
        Most records per read block.
    """

    url: str
    s3_endpoint: str | None = None
    format: InputFormat = InputFormat.AUTO
    image_column: str = "image"
    label_column: str = "label"
    split_column: str = "split"
    id_column: str = "id"
    ndim: int = 2
    channels: Channels = Channels.LUMINANCE
    n_channels: int | None = None
    min_side: int = 1
    override_num_blocks: int | None = None
    max_pixels: int = 64_000_000
    max_bytes: int = 1 << 30
    fetch_concurrency: int = 32
    read_attempts: int = 8
    block_bytes: int = 64 << 20
    block_rows: int = 4096

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"input url must be a non-empty string, got {self.url!r}")
        object.__setattr__(self, "format", InputFormat(self.format))
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {self.ndim!r}")
        object.__setattr__(self, "channels", Channels(self.channels))
        if self.channels is not Channels.LUMINANCE and self.ndim != 2:
            raise ValueError(f"channels={self.channels.value!r} needs 2-D images (ndim=2); "
                             "volumes are read as one channel (channels='luminance')")
        _check_positive("n_channels", self.n_channels, allow_none=True)
        _check_positive("min_side", self.min_side)
        _check_positive("override_num_blocks", self.override_num_blocks, allow_none=True)
        for name in ("max_pixels", "max_bytes", "fetch_concurrency", "read_attempts",
                     "block_bytes", "block_rows"):
            _check_positive(name, getattr(self, name))
        if self.s3_endpoint is None and os.environ.get("AWS_ENDPOINT_URL"):
            object.__setattr__(self, "s3_endpoint", os.environ["AWS_ENDPOINT_URL"])


@dataclass(frozen=True)
class FitConfig:
    """The fit stage: basis, solver and the actor pool that runs it.

    Parameters
    ----------
    radius : int, default=2
    dilations : tuple of int, default=(1, 2, 3)
        One coefficient vector per dilation, stored side by side.
    scales : tuple of int, default=(1,)
        Anti-aliased pyramid factors; every (scale, dilation) pair is one entry.
    basis : BasisKind, default=FULL
        The defaults (full radius 2 at dilations 1–3, with residual descriptors) are the
        recipe chosen by cross-validation in ``bench/accuracy.py`` (see README).
    ridge : float, default=1e-6
    normalize : bool, default=True
        Z-score each image before fitting.
    descriptors : bool, default=True
        Also store the residual descriptors of each image's own kernel.
    image_patterns : bool, default=True
        With ``descriptors`` (2-D images): also store the rotation-invariant sign-pattern
        histograms of each image itself at every dilation (the zero kernel's residual, in
        the same sweep; columns ``img_…`` of the descriptors). Chosen by cross-validation
        in ``bench/accuracy.py`` (see README, *Accuracy*).
    grid : int, optional
        Also store the window sums per cell of a ``grid × grid`` partition (residual
        energy maps from statistics); None stores whole-image sums only.
    cache_pixels : bool, default=False
        Also write the decoded pixels (uint8 or the source's integer type) to
        ``pixels/``, for a training stage that must not read the images again.
    batch_size : int, optional
        Images per actor call; default: one read block per call on CPU actors, 4096 on
        GPU actors (Ray needs a number there).
    batch_pixels : int, default=2**19
        Pixels per computation: the images of equal shape in an actor call are fitted
        together in chunks of at most this many pixels (an image larger than it alone).
        Sized by pixels, not images, so 32×32 and 512×512 datasets both amortise the
        per-call cost (measured at 32×32, default recipe, 1 thread: 64 images per call
        1,450 images/s, 512 images 2,500/s).
    num_gpus : int, default=0
        GPUs to use: >0 gives one GPU per fit task and at most this many tasks at once.
        Decided here, never by probing the cluster (an autoscaling cluster shows 0 GPUs
        at start).
    max_actors : int, optional
        At most this many CPU fit tasks at once; default: as many as the cluster's CPUs
        allow.
    threads_per_actor : int, default=1
        ``torch.set_num_threads`` in each CPU fit task's worker, and the CPUs it reserves.
    fault_kill_after : int, optional
        Testing only: the worker exits once after this many images; ``fault_marker``
        (a file) makes it happen once. Set by tests directly, or from the environment
        by :func:`kernelbank.faults.fit_fault_from_env` under the explicit test switch.
    """

    radius: int = 2
    dilations: tuple[int, ...] = (1, 2, 3)
    scales: tuple[int, ...] = (1,)
    basis: BasisKind = BasisKind.FULL
    ridge: float = 1e-6
    normalize: bool = True
    descriptors: bool = True
    image_patterns: bool = True
    grid: int | None = None
    cache_pixels: bool = False
    batch_size: int | None = None
    batch_pixels: int = 1 << 19
    num_gpus: int = 0
    max_actors: int | None = None
    threads_per_actor: int = 1
    fault_kill_after: int | None = None
    fault_marker: str | None = None

    def __post_init__(self) -> None:
        _check_positive("radius", self.radius)
        dilations = tuple(int(d) for d in self.dilations)
        if not dilations or any(d < 1 for d in dilations) or len(set(dilations)) != len(dilations):
            raise ValueError(f"dilations must be distinct positive integers, got {self.dilations!r}")
        object.__setattr__(self, "dilations", dilations)
        scales = tuple(int(s) for s in self.scales)
        if not scales or any(s < 1 for s in scales) or len(set(scales)) != len(scales):
            raise ValueError(f"scales must be distinct positive integers, got {self.scales!r}")
        object.__setattr__(self, "scales", scales)
        _check_positive("grid", self.grid, allow_none=True)
        object.__setattr__(self, "basis", BasisKind(self.basis))
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}")
        _check_positive("batch_size", self.batch_size, allow_none=True)
        _check_positive("batch_pixels", self.batch_pixels)
        if not isinstance(self.num_gpus, int) or self.num_gpus < 0:
            raise ValueError(f"num_gpus must be an integer >= 0, got {self.num_gpus!r}")
        _check_positive("max_actors", self.max_actors, allow_none=True)
        _check_positive("threads_per_actor", self.threads_per_actor)

    @property
    def min_side(self) -> int:
        """Smallest image side whose every pyramid level fits the largest dilated window
        (and, with descriptors, leaves a residual wider than the patterns' neighbours)."""
        window = 2 * self.radius * max(self.dilations) + 1 + (2 if self.descriptors else 0)
        return max(window * s - (s - 1) for s in self.scales)

    def descriptor_spec(self, ndim: int):
        """The :class:`~kernelbank.core.residual.ResidualDescriptors` the fit stage
        stores for ``ndim``-D images, or None without descriptors."""
        if not self.descriptors:
            return None
        from .core.fit import default_descriptors
        return default_descriptors(ndim, image_patterns=self.image_patterns)

    @property
    def scale_index(self) -> list[tuple[int, int]]:
        """``(scale, dilation)`` of every entry of the fit table's vectors, in order."""
        return [(s, d) for s in self.scales for d in self.dilations]


@dataclass(frozen=True)
class ReduceConfig:
    """The reduce stage: which banks to build from the merged class statistics.

    ``n_components`` is per dilation (PCA components or k-means centres; ignored by
    ``pooled``, which gives one kernel per class).
    """

    method: BankMethod = BankMethod.POOLED
    n_components: int = 8
    ridge: float = 1e-6
    random_state: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", BankMethod(self.method))
        _check_positive("n_components", self.n_components)


#: Feature groups the feature stage can compute from the statistics table.
FEATURE_GROUPS = ("own", "residual", "image", "bank")
#: The groups of ``kernelbank run`` with no options: the recipe ``bench/accuracy.py``
#: chooses by CV (the bank group adds the class kernels' fits, which turn with the image).
DEFAULT_FEATURE_GROUPS = ("own", "residual", "image")
#: How the ``own`` group gives each own kernel: ``auto`` is ``spectrum`` on one-channel 2-D
#: tables and ``coefficients`` on the others.
OWN_KERNEL_FORMS = ("auto", "coefficients", "symmetric", "spectrum")


@dataclass(frozen=True)
class FeatureConfig:
    """The feature stage: features of every image from the statistics table.

    Parameters
    ----------
    groups : tuple of str, default=("own", "residual", "image")
        ``own``: own-kernel coefficients and log MSE; ``residual``: residual
        descriptors; ``image``: the image's own sign-pattern histograms (stored by the
        fit stage with ``image_patterns``; a table without them gives none, with a
        warning); ``bank``: log MSE/variance, gain (and energy cells) of every bank
        kernel, from the window sums.
    rotation_invariant : bool, default=True
        Keep only the rotation-invariant histograms of the residual descriptors: drop
        the ``nri`` sign patterns and the (axis-bound) co-occurrences.
    power : float, default=0.5
        ``sign(h) |h|^power`` on every histogram column (sign patterns, co-occurrences):
        0.5 is the Hellinger map, 1 leaves them as they are.
    own_kernel : {"auto", "coefficients", "symmetric", "spectrum"}, default="auto"
        What the ``own`` group keeps of each own kernel. ``coefficients``: the basis
        coefficients (``ar_<entry>_c<j>``). ``symmetric``: each full-basis kernel's mean
        over the 8 symmetries of the window (one value per orbit of taps,
        ``ar_<entry>_sym<k>``; invariant to quarter turns and flips). ``spectrum``: the
        rotation-invariant spectral descriptors of :mod:`kernelbank.core.spectrum`
        (``ar_<entry>_spec_r<i>_h<k>``; any basis). Both need one-channel 2-D tables.
        ``auto``: ``spectrum`` where it applies, ``coefficients`` elsewhere (colour,
        volumes).
    joint : bool, default=True
        Add the joint coefficients of each dilation's bank kernels.
    ridge : float, default=1e-6
        Ridge of the joint fit.
    pixel_features : bool, default=False
        Also compute the bank kernels' MAE and win rate, which need the pixels: the
        images are read a second time.
    grid : int, default=1
        Cells per axis of the pixel features' MAE (the statistics features use the fit
        table's grid).
    """

    groups: tuple[str, ...] = DEFAULT_FEATURE_GROUPS
    rotation_invariant: bool = True
    power: float = 0.5
    own_kernel: str = "auto"
    joint: bool = True
    ridge: float = 1e-6
    pixel_features: bool = False
    grid: int = 1
    normalize: bool = True
    batch_size: int = 64
    max_actors: int | None = None
    threads_per_actor: int = 1
    num_gpus: int = 0

    def __post_init__(self) -> None:
        groups = tuple(dict.fromkeys(str(g) for g in self.groups))
        unknown = [g for g in groups if g not in FEATURE_GROUPS]
        if unknown or not groups:
            raise ValueError(f"feature groups must be a non-empty subset of {FEATURE_GROUPS}, "
                             f"got {self.groups!r}")
        object.__setattr__(self, "groups", groups)
        if not 0 < self.power <= 1:
            raise ValueError(f"power must be in (0, 1] (0.5: Hellinger, 1: none), got "
                             f"{self.power!r}")
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}")
        if self.own_kernel not in OWN_KERNEL_FORMS:
            raise ValueError(f"own_kernel must be one of {OWN_KERNEL_FORMS}, got "
                             f"{self.own_kernel!r}")
        _check_positive("grid", self.grid)
        _check_positive("batch_size", self.batch_size)
        _check_positive("max_actors", self.max_actors, allow_none=True)
        _check_positive("threads_per_actor", self.threads_per_actor)


class ClassifierHead(str, enum.Enum):
    """The classify stage's model (``--head``)."""

    RIDGE = "ridge"
    NYSTROEM = "nystroem"


@dataclass(frozen=True)
class ClassifyConfig:
    """The classify stage: a streaming classifier on the standardized features.

    ``ridge`` is the ``alpha`` of scikit-learn's ``RidgeClassifier``; None (default)
    chooses it by exact ``cv_folds``-fold cross-validation from the streaming sums.

    ``head`` picks the model: ``nystroem`` (default), an RBF kernel approximated by
    ``n_components`` Nyström landmarks, the map and the ridge fitted on at most
    ``sample_per_class`` train rows of each class (a uniform sample by a hash of the id),
    then every row scored (see :func:`kernelbank.heads.fit_kernel_head`); ``ridge``, the
    linear ridge fitted from sums over every train row.
    """

    ridge: float | None = None
    cv_folds: int = 5
    head: ClassifierHead = ClassifierHead.NYSTROEM
    sample_per_class: int = 256
    n_components: int = 1024

    def __post_init__(self) -> None:
        if self.ridge is not None and not self.ridge > 0:
            raise ValueError(f"ridge must be > 0 (or None to choose it by CV), got "
                             f"{self.ridge!r}")
        if not isinstance(self.cv_folds, int) or self.cv_folds < 2:
            raise ValueError(f"cv_folds must be an integer >= 2, got {self.cv_folds!r}")
        try:
            object.__setattr__(self, "head", ClassifierHead(self.head))
        except ValueError:
            raise ValueError(f"head must be one of {[h.value for h in ClassifierHead]}, got "
                             f"{self.head!r}") from None
        for name in ("sample_per_class", "n_components"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole run: input, output and every stage's settings.

    Parameters
    ----------
    output : str
        Output URL; gets ``fit/``, ``banks/``, ``features/``, ``errors/``, ``summary.json``.
    overwrite : bool, default=False
        Replace an existing output (built aside, then swapped in); otherwise refuse.
    ray_address : str, optional
        Cluster to join; default: ``RAY_ADDRESS`` or an embedded local Ray.
    """

    read: ReadConfig
    output: str
    fit: FitConfig = field(default_factory=FitConfig)
    reduce: ReduceConfig = field(default_factory=ReduceConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    overwrite: bool = False
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.output, str) or not self.output:
            raise ValueError(f"output url must be a non-empty string, got {self.output!r}")

