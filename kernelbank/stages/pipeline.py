"""The whole pipeline: fit → reduce → features → classify, as one published run.

One pass over the pixels: the fit stage is the only stage that reads images; it writes
the statistics table ``fit/`` (own kernels, window sums, residual descriptors), and
reduce, features and classify are algebra on tables. With a training stage to follow
(``cache_pixels``), the fit stage also keeps the decoded pixels in ``fit/_pixels/`` so
that training never reads the images again.

Everything is written to ``OUTPUT/runs/<run_id>/`` and published at the end by switching
``OUTPUT/LATEST.json`` (see :mod:`kernelbank.io.runs`), so ``OUTPUT`` always presents
one complete run — never a mix. A run stopped by a crash, SIGKILL or SIGTERM is resumed
by rerunning the same command: completed stages are reused, the fit stage continues
from its completed part files.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import PipelineConfig
from ..io.runs import RunWriter
from .classify import head_input, write_classify
from .common import connect_ray, log
from .features import write_features
from .fit import warm_workers, write_fit
from .reduce import write_reduce
from .summary import scrub, stage_specs
from .validation import check_classes

__all__ = ["run_pipeline"]



def recipe(config: PipelineConfig) -> str:
    """One line naming what the run computes, for ``summary.json`` and the report."""
    fit, feats = config.fit, config.features
    dilations = ",".join(map(str, fit.dilations))
    scales = "" if tuple(fit.scales) == (1,) else f" scales {','.join(map(str, fit.scales))}"
    channels = "" if config.read.channels.value == "luminance" else f" {config.read.channels.value}"
    own = (f"{fit.basis.value}{channels} radius {fit.radius} dilations {dilations}{scales}"
           + (" + residual descriptors" if fit.descriptors else "")
           + (" + image patterns" if fit.descriptors and fit.image_patterns else ""))
    groups = "+".join(feats.groups) + (" + joint" if feats.joint and "bank" in feats.groups
                                       else "") \
        + ("" if "own" not in feats.groups else
           " (own kernels: rotation-invariant spectra on grey 2-D images)"
           if feats.own_kernel == "auto" else f" (own kernels: {feats.own_kernel})")
    if {"residual", "image"} & set(feats.groups):
        groups += ((" (rotation-invariant histograms" if feats.rotation_invariant
                    else " (all histograms")
                   + (", Hellinger)" if feats.power == 0.5 else
                      f", power {feats.power:g})" if feats.power != 1 else ")"))
    ridge = config.classify.ridge
    alpha = (f"alpha by {config.classify.cv_folds}-fold CV" if ridge is None
             else f"alpha {ridge:g}")
    classify = config.classify
    head = "standardised ridge classifier" if classify.head.value == "ridge" else \
        (f"Nystroem RBF kernel head ({classify.n_components} landmarks, <= "
         f"{classify.sample_per_class} train rows per class)")
    return (f"{own}; {config.reduce.method.value} bank; features {groups}"
            f"{' + pixel features' if feats.pixel_features else ''}; {head} ({alpha})")

def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage on ``config.read.url`` and publish a run of ``config.output``.

    Returns
    -------
    dict
        The content of the run's ``summary.json``: ``input``, ``output``, ``run_id``,
        ``ray`` (mode, start-up seconds, resources), ``stages`` (per stage: seconds,
        images, images/s, counts per split and class, errors), ``errors`` (total),
        ``warnings`` (class and label problems), ``test_accuracy``, ``seconds``.

    Raises
    ------
    FileNotFoundError, ValueError
        When the input does not exist or holds no input file (checked first, before
        anything is created under the output and before Ray starts).
    FileExistsError
        When the output already has a published run and ``config.overwrite`` is false,
        or is not a kernelbank output (checked before any work).
    ValueError
        When the training images fall in fewer than two classes (after the fit stage,
        which is kept for a rerun).
    """
    from ..io.manifest import check_input
    endpoint = config.read.s3_endpoint
    check_input(config.read)        # before Ray starts and before the output is touched
    run = RunWriter.open(config.output, stage_specs(config), input_url=config.read.url,
                         overwrite=config.overwrite, s3_endpoint=endpoint, command="run",
                         describe={"input": config.read.url}, inherit=False)
    start = time.perf_counter()
    with run:
        ray_info = connect_ray(config.ray_address)
        warm_workers(config.fit)
        stages: dict[str, Any] = {}
        # the fit writes return the class statistics of their rows: reduce reads no table
        class_stats: dict = {}
        stages["fit"] = run.stage("fit").run_once(
            lambda stage: write_fit(config.read, config.fit, stage, class_stats=class_stats),
            resumable=True)
        warnings = check_classes(stages["fit"], where=config.read.url)
        for warning in warnings:
            log(f"warning: {warning}")
        stages["reduce"] = run.stage("reduce").run_once(
            lambda stage: write_reduce(run.stage_url("fit"), config.reduce, stage,
                                       s3_endpoint=endpoint, class_stats=class_stats))
        # the feature writes return what the classifier's head needs of the train rows
        # (per-fold sums or a sample): classify only fits and scores (a resumed run, whose
        # features are on disk, gathers it from there)
        gathered: dict = {}
        stages["features"] = run.stage("features").run_once(
            lambda stage: write_features(run.stage_url("fit"), run.stage_url("reduce"),
                                         config.features, stage, read=config.read,
                                         s3_endpoint=endpoint,
                                         head_input=head_input(config.classify),
                                         gathered=gathered))
        stages["classify"] = run.stage("classify").run_once(
            lambda stage: write_classify(run.stage_url("features"), config.classify, stage,
                                         s3_endpoint=endpoint,
                                         gathered=gathered.get("head_input")))
        errors = sum(sum(s.get("errors", {}).values()) for s in stages.values())
        summary = scrub({
            "input": config.read.url, "output": config.output, "recipe": recipe(config),
            "settings": {"channels": config.read.channels.value,
                         "n_channels": stages["fit"].get("n_channels", 1),
                         "radius": config.fit.radius, "dilations": list(config.fit.dilations),
                         "scales": list(config.fit.scales), "basis": config.fit.basis.value,
                         "descriptors": config.fit.descriptors,
                         "image_patterns": config.fit.image_patterns, "grid": config.fit.grid,
                         "bank_method": config.reduce.method.value,
                         "feature_groups": list(config.features.groups),
                         "rotation_invariant": config.features.rotation_invariant,
                         "power": config.features.power,
                         "own_kernel": config.features.own_kernel,
                         "joint": config.features.joint,
                         "head": config.classify.head.value,
                         "pixel_features": config.features.pixel_features,
                         "num_gpus": config.fit.num_gpus, "batch_size": config.fit.batch_size,
                         "batch_pixels": config.fit.batch_pixels},
            "ray": ray_info, "records": stages["fit"]["records"],
            "images": stages["fit"]["images"], "errors": errors, "warnings": warnings,
            "test_accuracy": stages["classify"]["test_accuracy"],
            "stages": stages, "seconds": round(time.perf_counter() - start, 3),
            "resumed": run.resumed,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        view = run.publish(summary)
    summary = view.summary
    acc = summary["test_accuracy"]
    log(f"done in {summary['seconds']:.1f} s: {summary['images']} images, {errors} errors, "
        f"test accuracy {'n/a' if acc is None else f'{acc:.3f}'}")
    log(f"outputs in {view.url.rstrip('/')}/runs/{view.run_id}/ (fit/ banks/ features/ "
        "classify/ errors/ summary.json), published through LATEST.json")
    return summary
