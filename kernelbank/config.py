"""Configuration of the distributed pipeline: one frozen dataclass per stage.

Strings from the command line become Enums and validated values here, at the edge;
the stages below only see these objects. Every Ray resource setting (batch size,
actors, GPUs, threads) lives in a stage config, nowhere else.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

__all__ = ["BasisKind", "BankMethod", "InputFormat", "ReadConfig", "FitConfig",
           "ReduceConfig", "FeatureConfig", "ClassifyConfig", "PipelineConfig",
           "FAULT_KILL_FIT_AFTER_ENV", "FAULT_MARKER_ENV"]

#: Fault injection for tests: the fit actor calls ``os._exit`` once after this many images.
FAULT_KILL_FIT_AFTER_ENV = "KERNELBANK_FAULT_KILL_FIT_AFTER"
#: File whose existence means "the injected fault already happened" (so it happens once).
FAULT_MARKER_ENV = "KERNELBANK_FAULT_MARKER"


class BasisKind(str, enum.Enum):
    """Which AR basis the fit stage uses (see :class:`kernelbank.Basis`)."""

    ISOTROPIC = "isotropic"
    FULL = "full"


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
        2 for images (RGB becomes luminance), 3 for ``.npy`` volumes.
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
    radius : int, default=4
    dilations : tuple of int, default=(1,)
        One coefficient vector per dilation, stored side by side.
    basis : BasisKind, default=ISOTROPIC
    ridge : float, default=1e-6
    normalize : bool, default=True
        Z-score each image before fitting.
    batch_size : int, default=64
        Images per actor call (images of equal shape are fitted together).
    num_gpus : int, default=0
        GPUs to use: >0 gives one GPU per actor and at most this many actors. Decided
        here, never by probing the cluster (an autoscaling cluster shows 0 GPUs at start).
    max_actors : int, optional
        Upper bound of the autoscaling CPU actor pool; default: the cluster's CPUs.
    threads_per_actor : int, default=1
        ``torch.set_num_threads`` in each CPU actor, and the CPUs it reserves.
    fault_kill_after : int, optional
        Testing only: the actor exits once after this many images (see
        :data:`FAULT_KILL_FIT_AFTER_ENV`); ``fault_marker`` makes it happen once.
    """

    radius: int = 4
    dilations: tuple[int, ...] = (1,)
    basis: BasisKind = BasisKind.ISOTROPIC
    ridge: float = 1e-6
    normalize: bool = True
    batch_size: int = 64
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
        object.__setattr__(self, "basis", BasisKind(self.basis))
        if not self.ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {self.ridge!r}")
        _check_positive("batch_size", self.batch_size)
        if not isinstance(self.num_gpus, int) or self.num_gpus < 0:
            raise ValueError(f"num_gpus must be an integer >= 0, got {self.num_gpus!r}")
        _check_positive("max_actors", self.max_actors, allow_none=True)
        _check_positive("threads_per_actor", self.threads_per_actor)

    @property
    def min_side(self) -> int:
        """Smallest image side the largest dilated window fits in."""
        return 2 * self.radius * max(self.dilations) + 1

    @classmethod
    def fault_from_env(cls) -> dict:
        """``fault_kill_after``/``fault_marker`` from the environment (testing switch)."""
        after = os.environ.get(FAULT_KILL_FIT_AFTER_ENV)
        if not after:
            return {}
        return {"fault_kill_after": int(after), "fault_marker": os.environ.get(FAULT_MARKER_ENV)}


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


@dataclass(frozen=True)
class FeatureConfig:
    """The feature stage: bank features per image (see :func:`kernelbank.bank_features`)."""

    grid: int = 2
    normalize: bool = True
    batch_size: int = 64
    max_actors: int | None = None
    threads_per_actor: int = 1
    num_gpus: int = 0

    def __post_init__(self) -> None:
        _check_positive("grid", self.grid)
        _check_positive("batch_size", self.batch_size)
        _check_positive("max_actors", self.max_actors, allow_none=True)
        _check_positive("threads_per_actor", self.threads_per_actor)


@dataclass(frozen=True)
class ClassifyConfig:
    """The classify stage: streaming ridge classifier on standardized features.

    ``ridge`` is the ``alpha`` of scikit-learn's ``RidgeClassifier`` (same default).
    """

    ridge: float = 1.0

    def __post_init__(self) -> None:
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge!r}")


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

