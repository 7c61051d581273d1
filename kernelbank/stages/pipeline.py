"""The whole pipeline: fit → reduce → features → classify, into one staged output.

One pass over the pixels: the fit stage is the only stage that reads images; it writes
the statistics table ``fit/`` (own kernels, window sums, residual descriptors), and
reduce, features and classify are algebra on tables. With a training stage to follow
(``cache_pixels``), the fit stage also keeps the decoded pixels in ``pixels/`` so that
training never reads the images again.

Everything is written to ``OUTPUT.partial-<id>`` and swapped in at the end (see
:mod:`kernelbank.io.layout`), so ``OUTPUT`` always holds one complete run or the
previous one — never a mix.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import PipelineConfig
from ..io.layout import SUMMARY, Staging, write_json
from ..io.storage import is_local, join, redact, url_of
from .classify import write_classify
from .common import connect_ray, log
from .features import write_features
from .fit import write_fit
from .reduce import write_reduce
from .summary import scrub

__all__ = ["run_pipeline"]


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage on ``config.read.url`` and write ``config.output``.

    Returns
    -------
    dict
        The content of ``OUTPUT/summary.json``: ``input``, ``output``, ``ray``
        (mode, start-up seconds, resources), ``stages`` (per stage: seconds,
        images, images/s, counts per split and class, errors), ``errors`` (total),
        ``test_accuracy``, ``seconds``.

    Raises
    ------
    FileExistsError
        When the output exists and ``config.overwrite`` is false (checked first).
    """
    endpoint = config.read.s3_endpoint
    staging = Staging.open(config.output, overwrite=config.overwrite, s3_endpoint=endpoint)
    start = time.perf_counter()
    try:
        ray_info = connect_ray(config.ray_address)
        stages: dict[str, Any] = {}
        stages["fit"] = write_fit(config.read, config.fit, staging)
        stages["reduce"] = write_reduce(url_of(staging.fs, staging.dir("fit")), config.reduce,
                                        staging, s3_endpoint=endpoint)
        stages["features"] = write_features(url_of(staging.fs, staging.dir("fit")),
                                            url_of(staging.fs, staging.dir("banks")),
                                            config.features, staging, read=config.read,
                                            s3_endpoint=endpoint)
        stages["classify"] = write_classify(url_of(staging.fs, staging.dir("features")),
                                            config.classify, staging, s3_endpoint=endpoint)
        errors = sum(sum(s.get("errors", {}).values()) for s in stages.values())
        summary = scrub({
            "input": config.read.url, "output": config.output,
            "settings": {"radius": config.fit.radius, "dilations": list(config.fit.dilations),
                         "scales": list(config.fit.scales), "basis": config.fit.basis.value,
                         "descriptors": config.fit.descriptors, "grid": config.fit.grid,
                         "bank_method": config.reduce.method.value,
                         "feature_groups": list(config.features.groups),
                         "joint": config.features.joint,
                         "pixel_features": config.features.pixel_features,
                         "num_gpus": config.fit.num_gpus, "batch_size": config.fit.batch_size},
            "ray": ray_info, "records": stages["fit"]["records"],
            "images": stages["fit"]["images"], "errors": errors,
            "test_accuracy": stages["classify"]["test_accuracy"],
            "stages": stages, "seconds": round(time.perf_counter() - start, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        write_json(staging.fs, join(staging.path, SUMMARY), summary)
        staging.commit()
    except BaseException:
        staging.abort()
        raise
    acc = summary["test_accuracy"]
    log(f"done in {summary['seconds']:.1f} s: {summary['images']} images, {errors} errors, "
        f"test accuracy {'n/a' if acc is None else f'{acc:.3f}'}")
    where = staging.final if is_local(staging.fs) else config.output
    log(f"outputs in {redact(where)} (fit/ banks/ features/ predictions/ errors/ summary.json)")
    return summary
