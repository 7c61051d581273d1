"""Train the end-to-end model (:mod:`kernelbank.nn`) with Ray Train.

``run_train(config)`` reads the train and test splits as Ray Datasets, trains a
:class:`~kernelbank.nn.EndToEndClassifier` with a ``TorchTrainer`` (data sharded to the
workers, DDP on gloo or NCCL), reports per-epoch metrics and a checkpoint through
``ray.train.report`` to a local or ``s3://`` storage path, resumes from the latest
checkpoint of a run with the same name, and exports the model of the epoch with the
best *validation* accuracy as one file that :func:`kernelbank.nn.load_model` and
``kernelbank predict`` read. The validation rows are the input's own ``val`` split or,
without one, a stratified seeded share of the train split
(:func:`~kernelbank.stages.holdout.carve_validation`); the test split is scored once,
with the exported weights, after the last epoch: it plays no part in any choice.

``run_train`` publishes a run of ``OUTPUT`` (see :mod:`kernelbank.io.runs`) that adds a
``train/`` stage and reuses the published run's other stages: ``model.pt`` (the exported
model), ``summary.json`` and, unless ``storage_path`` says otherwise,
``checkpoints/<run_name>/`` (Ray's checkpoints). A run stopped by a crash is resumed by
rerunning the same command: the unpublished run is found by its fingerprint and Ray
Train continues from its latest checkpoint.

The loop each worker runs lives in :mod:`kernelbank.stages.train_worker`. A checkpoint
holds the model, the optimizer state and the best weights so far (tensors only, read
with ``weights_only=True``) and the epoch counter and per-epoch history (JSON), so a
resumed run continues its history and exports the best model even when that epoch's
checkpoint was rotated out. Nothing read back here can run code.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..io.layout import SUMMARY, write_json
from ..io.storage import is_local, join, ray_filesystem, resolve
from .train_worker import STATE_FILE, STATE_JSON, load_checkpoint, train_loop_per_worker

__all__ = ["TrainConfig", "STATE_FILE", "STATE_JSON", "train_loop_per_worker", "fit_end_to_end",
           "load_train_test", "run_train"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the ``train`` stage (model, optimisation, Ray resources, storage).

    Parameters
    ----------
    output : str
        Output URL; the stage writes under ``OUTPUT/train/``.
    input : str, optional
        Images URL (folder or Parquet layouts of ``kernelbank run``, with train and test
        splits); ``None`` uses the built-in textures in memory.
    init : {"gabor", "random", "bank"}, default="gabor"
        Initial kernels (Gabor filters at every dilation, projected on the basis; random;
        or a saved bank). ``init_bank`` implies ``"bank"``.
    init_bank : str, optional
        URL of a saved :class:`kernelbank.KernelBank`; implies ``init="bank"``.
    workers : int, default=2
        Ray Train workers (one GPU each with ``use_gpu``).
    cpus_per_worker : float, default=0.5
        Keep below the CPUs per node so that Ray Data's read tasks still get a CPU.
    epochs, lr, weight_decay : optimisation (Adam).
    batch_size : int, default=32
        Global batch: each of the ``workers`` gets ``batch_size // workers`` images per
        step (at least 2), so the number of steps per epoch, and the result, hardly
        depend on the number of workers.
    shuffle_buffer : int, default=1024
        Rows each worker mixes before batching; the train split's blocks are also read in
        a random order each epoch. Inputs are usually sorted by class (folders), and
        class-sorted batches ruin batch norm's statistics, so keep this well above the
        number of rows in one block.
    schedule : {"cosine", "constant"}, default="cosine"
        Learning rate per epoch: ``lr · (1 + cos(π e / epochs)) / 2`` or constant. It
        depends only on the epoch counter, so a resumed run continues it exactly.
    radius, basis, dilations, n_kernels, grid, hidden, norm, gain :
        The model (see :class:`kernelbank.nn.ModelConfig`).
    patch_size : int, default=32
        Patch side of the built-in textures (when ``input`` is ``None``).
    classes : tuple of str, optional
        Restrict the built-in textures to these classes.
    storage_path : str, optional
        Where Ray keeps checkpoints; default the run's ``train/checkpoints``.
    run_name : str, default="end_to_end"
        A second run with the same name and storage resumes from its latest checkpoint.
    fail_after_epoch : int, optional
        Fault drill: every worker raises right after reporting this epoch (0-based). A
        rerun resumes from the latest checkpoint Ray's controller registered: this
        epoch's, or the one before when the failure overtook the report.
    random_state : int, default=0
        Seeds the model, the batch order and the validation split.
    validation_fraction : float, default=0.2
        Share of each class's training rows set aside to select the epoch on (stratified,
        seeded by ``random_state``), unless the input has its own ``val`` split.
    pixel_cache : str, optional
        A folder of decoded pixels written by the fit stage (``OUTPUT/pixels``, with
        ``kernelbank run --train``): training then reads no image at all. Without one, an
        ``input`` is decoded once into ``OUTPUT/train/pixels`` and every epoch iterates
        that cache.
    """

    output: str
    input: str | None = None
    pixel_cache: str | None = None
    init: str = "gabor"
    init_bank: str | None = None
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0
    schedule: str = "cosine"
    shuffle_buffer: int = 1024
    radius: int = 2
    basis: str = "isotropic"
    dilations: tuple[int, ...] = (1, 2, 4)
    n_kernels: int = 8
    grid: int = 2
    hidden: int = 64
    norm: str = "batch"
    gain: bool = False
    patch_size: int = 32
    classes: tuple[str, ...] | None = None
    storage_path: str | None = None
    run_name: str = "end_to_end"
    fail_after_epoch: int | None = None
    random_state: int = 0
    validation_fraction: float = 0.2
    s3_endpoint: str | None = None

    def __post_init__(self) -> None:
        if self.init_bank:
            object.__setattr__(self, "init", "bank")
        if self.init not in ("random", "gabor", "bank"):
            raise ValueError(f"init must be 'random', 'gabor' or 'bank', got {self.init!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.init == "bank" and not self.init_bank:
            raise ValueError("init='bank' needs init_bank=URL of a saved KernelBank")
        for name in ("workers", "epochs", "batch_size", "patch_size", "shuffle_buffer"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got "
                             f"{self.validation_fraction!r}")
        if not self.lr > 0 or not self.cpus_per_worker > 0:
            raise ValueError(f"lr and cpus_per_worker must be > 0, got lr={self.lr!r}, "
                             f"cpus_per_worker={self.cpus_per_worker!r}")
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def model_config(self, class_names: Sequence[str]):
        from ..nn import ModelConfig
        return ModelConfig(class_names=tuple(class_names), radius=self.radius, basis=self.basis,
                           dilations=self.dilations, n_kernels=self.n_kernels, grid=self.grid,
                           hidden=self.hidden, norm=self.norm, gain=self.gain)

    @property
    def train_url(self) -> str:
        """``OUTPUT/train``: where :func:`fit_end_to_end` writes when not given a folder."""
        return join(self.output.rstrip("/"), "train")


# ---------------------------------------------------------------------------- driver side
def _init_kernels(config: TrainConfig) -> tuple[list | None, list | None]:
    """Kernels and dilations to start from, as plain lists (they travel in the loop config)."""
    from ..core.bank import KernelBank
    from ..io.bank_file import load_bank
    if config.init == "random":
        return None, None
    if config.init == "bank":
        bank = load_bank(config.init_bank)
        if bank.radius > config.radius:
            raise ValueError(f"init bank {config.init_bank} has radius {bank.radius}, larger than "
                             f"the model radius {config.radius}; pass radius >= {bank.radius}")
    else:
        bank = KernelBank.concat([KernelBank.gabor(radius=config.radius, dilation=d)
                                  for d in config.dilations])
    return bank.kernels.numpy().tolist(), [int(d) for d in bank.dilations.tolist()]


def _checkpoint_storage(config: TrainConfig, folder_url: str):
    """Filesystem and path for Ray's checkpoints, without a listings cache.

    fsspec caches one instance per URL, with directory listings: a listing cached by a
    previous run in the same process would hide the checkpoints a new run writes.
    """
    fs, path = resolve(config.storage_path or join(folder_url, "checkpoints"),
                       s3_endpoint=config.s3_endpoint)
    if is_local(fs):
        os.makedirs(path, exist_ok=True)
        return fs, path
    options = {**fs.storage_options, "use_listings_cache": False, "skip_instance_cache": True}
    return type(fs)(**options), path


def fit_end_to_end(datasets: dict, class_names: Sequence[str], config: TrainConfig,
                   folder_url: str | None = None, validation: dict | None = None,
                   skipped: dict | None = None) -> dict:
    """Train on ``datasets["train"]``, select the epoch on ``datasets["validation"]``,
    export that epoch's model and score it once on ``datasets["test"]``.

    Parameters
    ----------
    datasets : dict with keys "train", "validation" and "test" of ray.data.Dataset
        Rows with ``image`` (2-D array, or ``(H, W, C)``; equal sizes batch together) and
        ``label`` (a name in ``class_names``).
    class_names : sequence of str
        Output classes, in logit order.
    config : TrainConfig
    folder_url : str, optional
        Folder of ``model.pt``, ``summary.json`` and (by default) ``checkpoints/``;
        default ``config.train_url``. :func:`run_train` passes its run's ``train/``.
    validation : dict, optional
        How the validation rows were chosen (:func:`load_train_test` returns it); copied
        into the summary.
    skipped : dict, optional
        The input's undecodable train and validation rows (:func:`load_train_test`:
        ``rows`` and a few ``examples``), reported in the first epoch's ``skipped_rows``
        with the rows of unknown labels the workers skip.

    Returns
    -------
    dict
        The summary also written to ``summary.json`` there.
    """
    folder_url = folder_url or config.train_url
    import ray.train
    from ray.train.torch import TorchTrainer
    from ..nn import EndToEndClassifier, ModelConfig, save_model

    model_config = config.model_config(class_names)
    kernels, dilations = _init_kernels(config)
    loop = {"model": model_config.to_dict(), "random_state": config.random_state,
            "lr": config.lr, "weight_decay": config.weight_decay, "epochs": config.epochs,
            "schedule": config.schedule, "shuffle_buffer": config.shuffle_buffer,
            "batch_size": max(2, config.batch_size // config.workers),
            "threads": max(1, int(config.cpus_per_worker)),
            "init_kernels": kernels, "init_dilations": dilations,
            "fail_after_epoch": config.fail_after_epoch,
            "skipped": skipped or {"rows": 0, "examples": []}}
    storage_fs, storage_path = _checkpoint_storage(config, folder_url)
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config=loop,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker}),
        # a seeded block order (the local shuffle is seeded too)
        datasets={"train": datasets["train"].randomize_block_order(seed=config.random_state),
                  "validation": datasets["validation"], "test": datasets["test"]},
        run_config=ray.train.RunConfig(
            name=config.run_name, storage_path=storage_path,
            storage_filesystem=ray_filesystem(storage_fs),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)))
    began = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - began
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(folder)

    model = EndToEndClassifier(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["best"]["state"])
    history = state["history"]
    model_url = join(folder_url, "model.pt")
    best = state["best"]
    final = state["test"]                   # the one scoring of the test split
    if final is None:
        raise RuntimeError("the training run ended without scoring the test split; rerun the "
                           "same command to resume it")
    save_model(model, model_url, metadata={"test_accuracy": final["test_accuracy"],
                                           "validation_accuracy": best["validation_accuracy"],
                                           "epoch": best["epoch"]})
    # steady state: the first epoch of every run also waits for the data pipeline to start
    steady = [h for h in history if h["epoch"] != h["run_start_epoch"]] or history
    summary = {
        "stage": "train", "test_accuracy": final["test_accuracy"],
        "test_images": final["test_images"], "best_epoch": best["epoch"],
        "validation_accuracy": best["validation_accuracy"],
        "selected_by": "validation_accuracy",
        "validation": {**(validation or {}), "images": history[0]["validation_images"]
                       if history else 0},
        "checkpoint": model_url, "run_checkpoint": result.checkpoint.path,
        "epochs": history, "class_names": list(class_names),
        "images_per_s": _rate(steady), "images_per_s_with_startup": _rate(history),
        "fit_seconds": wall, "workers": config.workers, "use_gpu": config.use_gpu,
        "resumed_from_epoch": history[-1]["run_start_epoch"] if history else 0,
        "model": model_config.to_dict(), "n_parameters": sum(p.numel() for p in model.parameters()),
        "config": {k: v for k, v in asdict(config).items() if k != "s3_endpoint"},
    }
    fs, summary_path = resolve(join(folder_url, SUMMARY), s3_endpoint=config.s3_endpoint)
    write_json(fs, summary_path, summary)
    return summary


def _rate(history: list[dict]) -> float:
    seconds = sum(h["epoch_seconds"] for h in history)
    return sum(h["train_images"] for h in history) / max(seconds, 1e-9)


def _texture_rows(config: TrainConfig) -> list[dict]:
    """The built-in textures as rows of the reader's schema (:data:`DECODED_SCHEMA`)."""
    from ..datasets import load_textures
    images, labels, splits = load_textures(patch_size=config.patch_size, classes=config.classes)
    rows = []
    for i, (image, label, split) in enumerate(zip(images, labels, splits)):
        pixels = np.ascontiguousarray(image, dtype=np.float32)
        rows.append({"id": f"textures#{i}", "path": f"textures/{split}/{label}/{i}",
                     "label": str(label), "split": str(split), "shape": list(pixels.shape),
                     "pixels": pixels.tobytes(), "stage": None, "reason": None})
    return rows


#: Share of the rows without a split that become test rows (by a hash of their id).
TEST_FRACTION = 0.3


def _split_files(files: list[str], split: str) -> list[str]:
    """The files that can hold rows of ``split``: all of them, unless every file's name
    says its split (the caches :func:`_decode_once` writes)."""
    import posixpath
    from .holdout import VALIDATION_SPLITS
    sources = {"train": ("train",), "validation": ("train", *VALIDATION_SPLITS),
               "test": ("test",)}[split]
    named = {f: posixpath.basename(f).split("-part-")[0] for f in files}
    if not all("-part-" in posixpath.basename(f) for f in files):
        return files
    return [f for f in files if named[f] in sources]


def _assign_split(batch: dict, test_fraction: float) -> dict:
    """Keep ``train``/``test`` rows; give unsplit rows a stable split by a hash of their id."""
    import zlib
    splits = []
    for rid, split in zip(batch["id"], batch["split"]):
        split = str(split)
        if split not in ("train", "test", "val", "validation"):
            bucket = zlib.crc32(str(rid).encode()) % 1000
            split = "test" if bucket < 1000 * test_fraction else "train"
        splits.append(split)
    batch["split"] = np.array(splits, dtype=object)
    return batch


def _decode_once(config: TrainConfig) -> str:
    """Decode the input's images once into ``OUTPUT/train/pixels`` (Parquet); its URL."""
    from ..config import ReadConfig
    from ..io.readers import read_dataset
    from ..io.tables import PIXEL_COLUMNS, write_table
    from .progress import configure_ray_data
    configure_ray_data()
    fs, cache = resolve(join(config.train_url, "pixels"), s3_endpoint=config.s3_endpoint)
    if fs.exists(cache):
        fs.rm(cache, recursive=True)
    min_side = 2 * config.radius * max(config.dilations) + config.grid   # model.min_image_size
    ds = read_dataset(config=ReadConfig(url=config.input, s3_endpoint=config.s3_endpoint,
                                        min_side=min_side))
    columns = ["id", "path", "label", "split", "shape", *PIXEL_COLUMNS, "stage", "reason"]

    def write(batch, *, fs=fs, cache=cache):
        import hashlib
        import re
        import pyarrow as pa
        import pyarrow.compute as pc
        batch = batch.select([c for c in columns if c in batch.column_names])
        splits = _assign_split({"id": batch.column("id").to_pylist(),
                                "split": batch.column("split").to_pylist()}, TEST_FRACTION)
        batch = batch.set_column(batch.column_names.index("split"), "split",
                                 pa.array(list(splits["split"]), pa.string()))
        # one file per split: an epoch reads the train split's files alone, and they are
        # the same whatever the other splits hold; named by the smallest id, not at random,
        # so that listing the files by name gives the reader's order back
        for split in sorted(set(splits["split"])):
            part = batch.filter(pc.equal(batch.column("split"), split))
            ids = sorted(map(str, part.column("id").to_pylist()))
            first = re.sub(r"[^A-Za-z0-9._-]", "_", ids[0])[:120]
            digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]
            write_table(part, fs, join(cache, f"{split}-part-{first}-{digest}.parquet"))
        return {"rows": [batch.num_rows]}
    for _ in ds.map_batches(write, batch_format="pyarrow").iter_batches(batch_size=None):
        pass
    return cache if is_local(fs) else fs.unstrip_protocol(cache)


def _mark_validation(batch: dict, ids: frozenset) -> dict:
    """Relabel the rows whose id is in ``ids`` as the ``validation`` split."""
    batch["split"] = np.array(["validation" if str(rid) in ids else str(split)
                               for rid, split in zip(batch["id"], batch["split"])], dtype=object)
    return batch


def load_train_test(config: TrainConfig) -> tuple[dict, list[str], dict, dict]:
    """``{"train", "validation", "test": Dataset}`` of decoded rows, the sorted class names,
    how the validation rows were chosen, and the undecodable train and validation rows
    (``rows``, up to five ``examples`` of path and reason).

    Undecodable rows are counted here, not by the workers that skip them: Ray Train splits
    each dataset equally among its workers and drops the remainder rows, so the workers'
    count could miss one.

    The images are read at most once: from the fit stage's pixel cache
    (``config.pixel_cache``), or decoded once from ``config.input`` into a Parquet cache
    under the output; every epoch iterates the cache. Rows without a ``train``/``test``
    split are assigned one by a hash of their id (30 % test). The input's ``val`` rows
    are the validation split; without any, :func:`~.holdout.carve_validation` sets aside
    ``config.validation_fraction`` of each class's train rows (ids and labels only are
    read for that). Without either input, the built-in textures are used. Class names are
    ``config.classes`` or else the labels of the train split.
    """
    from .holdout import VALIDATION_SPLITS, carve_validation
    from .progress import configure_ray_data
    import ray.data
    from ..io.readers import DECODED_SCHEMA
    configure_ray_data()
    if config.pixel_cache is None and config.input is None:
        import pyarrow as pa
        rows = _texture_rows(config)
        ds = ray.data.from_arrow([pa.Table.from_pylist(rows[i:i + 64], schema=DECODED_SCHEMA)
                                  for i in range(0, len(rows), 64)])    # blocks to shuffle

        def read(split, *, ds=ds):
            return ds
        keys = [(row["id"], row["label"], row["split"]) for row in rows]
        errors: list[dict] = []
    else:
        cache = config.pixel_cache or _decode_once(config)
        fs, path = resolve(cache, s3_endpoint=config.s3_endpoint)
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        if not files:
            raise FileNotFoundError(f"no decoded pixels in {cache!r}: nothing to train on")

        def read(split, *, files=files, fs=fs):
            chosen = _split_files(files, split)
            if not chosen:        # no file of this split: an empty dataset of the same rows
                return ray.data.read_parquet(files[:1], filesystem=ray_filesystem(fs)).limit(0)
            return ray.data.read_parquet(chosen, filesystem=ray_filesystem(fs)).map_batches(
                _assign_split, batch_format="numpy", fn_kwargs={"test_fraction": TEST_FRACTION})
        import pyarrow.dataset as pads
        dataset = pads.dataset(files, format="parquet", filesystem=ray_filesystem(fs))
        table = dataset.to_table(columns=[c for c in ("id", "label", "split", "stage", "path",
                                                       "reason")
                                          if c in dataset.schema.names])
        # the same split rule as the rows will get (_assign_split), on ids and labels only
        splits = _assign_split({"id": table.column("id").to_pylist(),
                                "split": table.column("split").to_pylist()},
                               TEST_FRACTION)["split"]
        stages = table.column("stage").to_pylist() if "stage" in table.column_names \
            else [None] * table.num_rows          # error rows have a stage and no pixels
        keys = [(rid, label, split) for rid, label, split, stage in
                zip(table.column("id").to_pylist(), table.column("label").to_pylist(), splits,
                    stages) if stage is None and label]
        # error rows (in the input's decoded cache; the fit stage's cache keeps none)
        errors = [{"path": str(table.column("path")[i]), "reason": str(table.column("reason")[i])}
                  for i, (split, stage) in enumerate(zip(splits, stages))
                  if stage is not None and split != "test"]
    train_keys = [(rid, label) for rid, label, split in keys if split == "train"]
    found = {str(label) for _, label in train_keys if label}
    wanted = set(config.classes) if config.classes is not None else found
    if any(split in VALIDATION_SPLITS for _, _, split in keys):
        ids = frozenset(rid for rid, _, split in keys if split in VALIDATION_SPLITS)
        validation = {"source": "input", "splits": list(VALIDATION_SPLITS)}
    else:
        carved, counts = carve_validation(
            [rid for rid, label in train_keys if label in wanted],
            [label for rid, label in train_keys if label in wanted],
            config.validation_fraction, config.random_state)
        ids = frozenset(carved)
        validation = {"source": "carved from train", "fraction": config.validation_fraction,
                      "random_state": config.random_state, "per_class": counts}
    from ray.data.expressions import col
    datasets = {split: read(split).map_batches(_mark_validation, batch_format="numpy",
                                               fn_kwargs={"ids": ids})
                .filter(expr=col("split") == split) for split in ("train", "validation", "test")}
    return datasets, sorted(wanted), validation, {"rows": len(errors), "examples": errors[:5]}


def run_train(config: TrainConfig, *, overwrite: bool = False) -> dict:
    """Read the data of ``config``, train, export; publish a run with ``train/``.

    The run reuses the published run's other stages. ``overwrite`` allows replacing a
    ``train/`` the published run already has. Returns the train summary.
    """
    from .summary import run_alone, settings_of

    def train(stage) -> dict:
        began = time.perf_counter()
        datasets, class_names, validation, skipped = load_train_test(config)
        if len(class_names) < 2:
            raise ValueError(f"training needs at least 2 classes in the train split of "
                             f"{config.input or 'the built-in textures'}, found {class_names}")
        summary = fit_end_to_end(datasets, class_names, config, folder_url=stage.url,
                                 validation=validation, skipped=skipped)
        # the run summary's per-stage fields, like every other stage's
        return {**summary, "seconds": round(time.perf_counter() - began, 3),
                "images_per_second": round(summary["images_per_s"], 2)}
    return run_alone(config.output, "train", settings_of(config), train,
                     input_url=config.input, overwrite=overwrite,
                     s3_endpoint=config.s3_endpoint, resumable=True)
