"""The feature stage: bank features of every image, one named Parquet column per feature.

The images are read and decoded again (the fit table holds coefficients, not pixels).
Records that failed decoding are dropped here: they are already in ``errors/`` from the
fit stage. The bank (and the class statistics of the likelihood classifier) go to the
object store once with ``ray.put``; each :class:`BankFeaturizer` actor fetches them in
its constructor. Columns of ``features/*.parquet``: ``id, path, label, split``, then one
float64 column per name of :func:`kernelbank.core.features.bank_feature_names`, then
``likelihood_prediction`` (the class the per-class AR models explain best).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import FeatureConfig, ReadConfig
from ..io.layout import write_json
from ..io.readers import images_from_batch, read_dataset
from ..io.stats_file import load_stats
from ..io.storage import join, resolve, storage_options, url_of
from ..io.tables import SplitParquetSink
from .common import actor_pool_args, log, timed
from .reduce import BANK_FILE

__all__ = ["BankFeaturizer", "load_bank_and_stats", "run_features", "write_features"]

PREDICTION = "likelihood_prediction"


def _drop_decode_errors(batch: pa.Table) -> pa.Table:
    import pyarrow.compute as pc
    return batch.filter(pc.is_null(batch.column("reason")))


class BankFeaturizer:
    """Ray Data actor: bank features (and likelihood prediction) of decoded images.

    Parameters
    ----------
    bank : KernelBank or ObjectRef to one
    stats : list of ClassStats (or an ObjectRef to it), optional
        Merged statistics per dilation, for :class:`kernelbank.LikelihoodClassifier`.
    config : FeatureConfig
    """

    def __init__(self, bank, stats, config: FeatureConfig):
        import ray
        import torch
        import kernelbank as kb
        torch.set_num_threads(config.threads_per_actor)
        self.torch, self.kb = torch, kb
        self.bank = ray.get(bank) if isinstance(bank, ray.ObjectRef) else bank
        stats = ray.get(stats) if isinstance(stats, ray.ObjectRef) else stats
        self.classifier = None if not stats else kb.LikelihoodClassifier.from_stats(
            list(stats), z=None)
        self.config = config
        self.device = torch.device("cuda" if config.num_gpus > 0 and torch.cuda.is_available()
                                   else "cpu")
        self.names = kb.core.features.bank_feature_names(self.bank, grid=config.grid)

    def _features(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
        batch = [self.torch.tensor(i, device=self.device) for i in images]
        feats, _ = self.kb.bank_features(batch, self.bank, grid=self.config.grid,
                                         normalize=self.config.normalize)
        predicted = list(self.classifier.predict(images)) if self.classifier else [""] * len(images)
        return feats.detach().cpu().numpy(), predicted

    def __call__(self, batch: pa.Table) -> pa.Table:
        images = images_from_batch(batch)
        n = len(images)
        values = np.full((n, len(self.names)), np.nan)
        predicted: list[str | None] = [None] * n
        stage: list[str | None] = [None] * n
        reason: list[str | None] = [None] * n
        try:
            values[:], predicted = self._features(images)
        except ValueError:
            for i, image in enumerate(images):
                try:
                    row, label = self._features([image])
                    values[i], predicted[i] = row[0], label[0]
                except ValueError as error:
                    stage[i], reason[i] = "features", str(error).replace("image 0 ", "image ")
        columns = {c: batch.column(c) for c in ("id", "path", "label", "split")}
        columns.update({name: pa.array(values[:, j]) for j, name in enumerate(self.names)})
        columns[PREDICTION] = pa.array([str(p) if p is not None else None for p in predicted],
                                       pa.string())
        columns["stage"] = pa.array(stage, pa.string())
        columns["reason"] = pa.array(reason, pa.string())
        return pa.table(columns)


def load_bank_and_stats(banks_url: str, *, s3_endpoint: str | None = None):
    """The bank and the per-dilation :class:`ClassStats` written by the reduce stage.

    Both are read as plain arrays and JSON (``allow_pickle=False``): a file planted in
    the output can be malformed but never runs code.
    """
    import kernelbank as kb
    fs, path = resolve(banks_url, s3_endpoint=s3_endpoint)
    bank_url = url_of(fs, join(path, BANK_FILE))
    if not fs.exists(join(path, BANK_FILE)):
        raise FileNotFoundError(f"no bank at {banks_url!r}: run the reduce stage first")
    bank = kb.KernelBank.load(bank_url, **storage_options(bank_url, s3_endpoint))
    # in the bank's dilation order (a name sort would put stats_d10 before stats_d2)
    stats = []
    for dilation in dict.fromkeys(int(d) for d in bank.dilations.tolist()):
        stats.append(load_stats(fs, join(path, f"stats_d{dilation}.npz")))
    return bank, stats


def write_features(read: ReadConfig, banks_url: str, config: FeatureConfig, staging
                   ) -> dict[str, Any]:
    """Run the feature stage into ``staging`` (``features/`` and ``errors/features-*``)."""
    import ray
    bank, stats = load_bank_and_stats(banks_url, s3_endpoint=read.s3_endpoint)
    read = replace(read, min_side=max(read.min_side, 2 * bank.max_reach + 1))
    sink = SplitParquetSink(staging.fs, staging.dir("features"), staging.dir("errors"),
                            staging.part_prefix)
    summary: dict[str, Any] = {}
    log(f"features: {read.url} with {len(bank)} kernels, grid={config.grid}")
    with timed(summary):
        ds = read_dataset(config=read).map_batches(_drop_decode_errors, batch_format="pyarrow")
        ds = ds.map_batches(BankFeaturizer,
                            fn_constructor_args=(ray.put(bank), ray.put(stats), config),
                            batch_format="pyarrow",
                            **actor_pool_args(num_gpus=config.num_gpus,
                                              max_actors=config.max_actors,
                                              threads=config.threads_per_actor,
                                              batch_size=config.batch_size))
        ds.write_datasink(sink)
    import kernelbank as kb
    names = kb.core.features.bank_feature_names(bank, grid=config.grid)
    write_json(staging.fs, join(staging.dir("features"), "_kernelbank.json"),
               {"feature_names": names, "prediction_column": PREDICTION, "grid": config.grid})
    counts = sink.per_split_and_class()
    images = sum(sum(v.values()) for v in counts.values())
    errors = sink.errors_by_stage()
    summary.update({"images": images, "errors": errors, "counts": counts,
                    "n_features": len(names),
                    "images_per_second": round(images / max(summary["seconds"], 1e-9), 2)})
    log(f"features: {images} images x {len(names)} features, {sum(errors.values())} errors, "
        f"{summary['seconds']:.1f} s ({summary['images_per_second']:.1f} images/s)")
    return summary


def run_features(read: ReadConfig, output: str, config: FeatureConfig, *,
                 overwrite: bool = False) -> dict[str, Any]:
    """The feature stage alone: reads the published ``banks/``, publishes ``features/``."""
    from .summary import input_spec, run_alone, settings_of
    spec = {"input": input_spec(read), "features": settings_of(config)}
    return run_alone(output, "features", spec,
                     lambda stage: write_features(read, stage.run.stage_url("reduce"), config,
                                                  stage),
                     input_url=read.url, overwrite=overwrite, s3_endpoint=read.s3_endpoint)
