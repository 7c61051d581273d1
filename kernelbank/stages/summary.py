"""What a run records about itself: stage settings that define its result, and summaries.

* :func:`stage_specs` — per stage, the settings that determine its output (the run
  fingerprints of :mod:`kernelbank.io.runs` are hashes of these). Resource settings
  (batch size, actors, threads, GPUs) and test switches are left out, so a crashed run
  resumes even when it is rerun with more GPUs.
* :func:`run_alone` — one stage as its own run (``kernelbank fit|reduce|features|classify``):
  reuses the published run's upstream stages, publishes a new run.
* :func:`scrub` — credentials removed from everything a summary holds.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from typing import Any, Callable, Mapping

from ..io.runs import RunWriter, StageWriter
from ..io.storage import redact

__all__ = ["scrub", "stage_specs", "settings_of", "input_spec", "run_alone", "derived_fields",
           "RESOURCE_FIELDS"]

#: Config fields that change how fast a stage runs, not what it writes.
RESOURCE_FIELDS = frozenset({
    "batch_size", "batch_pixels", "num_gpus", "max_actors", "threads_per_actor",
    "override_num_blocks",
    "fetch_concurrency", "read_attempts", "block_bytes", "block_rows",
    "s3_endpoint", "fault_kill_after", "fault_marker", "workers", "use_gpu",
    "cpus_per_worker", "storage_path", "fail_after_epoch", "output", "ray_address"})


def scrub(value: Any) -> Any:
    """``value`` with credential strings removed from every string inside it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def settings_of(config: Any) -> dict[str, Any]:
    """The result-defining fields of a config dataclass (resource fields dropped)."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config)
            if f.name not in RESOURCE_FIELDS}


def input_spec(read) -> dict[str, Any]:
    """What identifies the input of a :class:`~kernelbank.config.ReadConfig`.

    ``channels`` appears only when it is not the default luminance, so the fingerprint
    of a luminance run is the one it had before channels existed; ``n_channels`` is
    found from the data (the first record), never part of the spec.
    """
    spec = settings_of(read)
    spec.pop("n_channels", None)
    if spec.get("channels") == "luminance":
        spec.pop("channels")
    return scrub(spec)


def stage_specs(config, stages: tuple[str, ...] = ("fit", "reduce", "features", "classify")
                ) -> dict[str, dict]:
    """Specs of ``stages`` of a :class:`~kernelbank.config.PipelineConfig`."""
    specs = {"fit": {"input": input_spec(config.read), "fit": settings_of(config.fit)},
             "reduce": settings_of(config.reduce),
             "features": {"input": input_spec(config.read),
                          "features": settings_of(config.features)},
             "classify": settings_of(config.classify)}
    return {s: specs[s] for s in stages}


def derived_fields(stages: Mapping[str, dict]) -> dict[str, Any]:
    """Run-level numbers of a run's stage summaries: ``records``, ``images``, ``errors``,
    ``test_accuracy`` (None without a classify stage) and the fit stage's ``warnings``."""
    fit, classify = stages.get("fit", {}), stages.get("classify", {})
    errors = sum(sum(s.get("errors", {}).values()) for s in stages.values()
                 if isinstance(s.get("errors"), dict))
    return {"records": fit.get("records"), "images": fit.get("images"), "errors": errors,
            "test_accuracy": classify.get("test_accuracy"),
            "warnings": list(fit.get("warnings", []))}


def run_alone(output: str, stage: str, spec: Mapping[str, Any],
              write: Callable[[StageWriter], dict[str, Any]], *, input_url: str | None = None,
              overwrite: bool = False, s3_endpoint: str | None = None,
              resumable: bool = False) -> dict[str, Any]:
    """Run one stage as a new run of ``output`` and publish it.

    The run reuses the published run's stages upstream of ``stage`` (its manifest points
    at their folders) and drops those downstream. ``write(stage_writer)`` writes the
    stage and returns its summary; ``stage_writer.run.stage_url(name)`` locates the
    upstream outputs. Returns the stage summary; the run's ``summary.json`` holds it with
    the reused stages' summaries and the run-level numbers (:func:`derived_fields`).
    """
    run = RunWriter.open(output, {stage: spec}, input_url=input_url, overwrite=overwrite,
                         s3_endpoint=s3_endpoint, command=stage)
    with run:
        summary = run.stage(stage).run_once(write, resumable=resumable)
        stages = {s: run.base.stage_summary(s) for s in run.inherits} if run.base else {}
        stages[stage] = summary
        base = run.base.summary if run.base and "fit" in run.inherits else {}
        carried = {k: base[k] for k in ("input", "settings") if k in base}
        if input_url and "input" not in carried:
            carried["input"] = input_url
        run.publish({**carried, **derived_fields(stages), "stages": stages,
                     "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return summary
