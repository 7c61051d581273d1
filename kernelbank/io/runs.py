"""Crash-safe, resumable, never-mixed outputs: immutable runs published by one pointer.

An output root holds runs (layout in :mod:`kernelbank.io.layout`). A run is written
once, into its own prefix ``OUTPUT/runs/<run_id>/``, and becomes *the* output only when
the small pointer ``OUTPUT/LATEST.json`` is switched to it — the last write of a run,
done with a compare-and-swap (:mod:`kernelbank.io.atomic`). Readers never list
``OUTPUT``: they follow the pointer to a manifest that names every stage's folder.

Writing (the stages and the pipeline)::

    run = RunWriter.open(url, {"fit": fit_spec, "reduce": reduce_spec}, input_url=...,
                         overwrite=False, s3_endpoint=None, command="run")
    with run:                                   # on any error: left resumable, lease freed
        fit = run.stage("fit")
        summary = fit.run_once(lambda stage: write_fit(read, config, stage), resumable=True)
        # inside write_fit: stage.fs, stage.dir("fit"), stage.dir("errors"),
        # stage.part_prefix (file-name prefix of this attempt's part files),
        # stage.completed_ids() (ids already in completed part files: skip them),
        # stage.completed_parts() (those files, for the summary counts)
        banks = run.stage("reduce").run_once(
            lambda stage: write_reduce(run.stage_url("fit"), ...))
        run.publish({"stages": {...}, ...})     # manifest, summary.json, pointer, clean-up

Reading (stages, ``kernelbank report``, classify, train)::

    view = open_published(url)                  # follows LATEST.json
    view.stage_path("fit"), view.stage_url("reduce"), view.stage_files("fit", ".parquet"),
    view.error_files(), view.summary, view.path (the run's own prefix)

Rules for a stage's ``write`` function: write only below ``stage.path`` and as
``errors/<stage.part_prefix>-*.parquet``; write whole files (:func:`~kernelbank.io.tables.
write_table`, :func:`~kernelbank.io.layout.write_json`, :func:`~kernelbank.io.atomic.
write_bytes`); name part files with ``stage.part_prefix`` so attempts never collide; find
upstream outputs with ``run.stage_url(name)`` (a reader of a published run should prefer
``view.stage_files(name)``, the exact list the stage recorded, to listing the folder). A
stage run with ``resumable=False`` (the default) starts from an empty folder after a
crash; with ``resumable=True`` it keeps earlier attempts' part files and must skip
``stage.completed_ids()``.

Guarantees
----------
*Atomic publish.* A reader sees the previous published run or the new one, never a mix:
a run's files are never modified after its stage markers are written (only its
``report/`` is added after publication), and the pointer is one object replaced
atomically. Two runs racing to publish on one output: the
pointer swap is conditional on the pointer read when the run started (S3
``If-Match``/``If-None-Match``; local ``flock`` + rename), so the second one is refused
(:class:`PublishConflict`) and stays unpublished; two drivers of the *same* command
cannot write one run (the second finds the first's live lease and stops).

*Exactly once.* Every part file is written whole (temporary file + rename, or one PUT)
under a name unique to its stage, attempt and write task, and a stage's marker lists
the files that make it up; a resumed stage skips the ids already in completed files
and rewrites nothing.

*Resume.* A run is identified by a fingerprint of what determines its result (stage
settings, input description, upstream stages; not resources such as batch size or
GPUs). Rerunning a command after a crash, SIGKILL or SIGTERM finds the unpublished run
with the same fingerprint whose lease is stale (its driver is dead on this host, or its
heartbeat is older than the timeout elsewhere), reuses its completed stages (a stage is
complete when its ``_SUCCESS.json``, written last, exists) and resumes the fit stage
from its completed part files. The input's content is not fingerprinted: change files
under the same input URL between a crash and a resume and the resumed run mixes them.

*Stage reruns never mix.* ``kernelbank reduce --output OUT`` publishes a new run whose
manifest points at the previous run's ``fit/`` folder (no copy) and drops every stage
downstream of ``reduce``; every stage records the run and fingerprint of each upstream
stage it read, and :func:`open_published` refuses a manifest whose stages disagree
(:class:`StageMismatch`).

*Retention.* After a successful publish, the runs referenced by the last
:data:`KEEP_PUBLISHED` published runs are kept; other runs under ``OUTPUT/runs/`` are
deleted only if they carry the run marker, the output root carries the ownership
marker, and no live driver holds them. Stale unpublished runs are deleted the same way
at the start of the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .. import faults
from .atomic import create_exclusive, read_versioned, remove_tree, replace_if, retried
from .layout import (ERRORS, LEASE, MANIFEST, MARKER, POINTER, RUN_MARKER, RUNS, STAGE_DEPENDS,
                     STAGE_FOLDERS, STAGE_MARKER, STAGE_ORDER, SUMMARY, downstream, json_bytes,
                     read_json, write_json)
from .lease import LEASE_TIMEOUT_S, Lease, LeaseBusy, holder_alive
from .output_safety import check_not_nested, check_output
from .storage import join, redact, resolve, safe_url, url_of

__all__ = ["RunView", "RunWriter", "StageWriter", "open_published", "open_run", "fingerprint",
           "PublishConflict", "StageMismatch", "NothingPublished", "KEEP_PUBLISHED",
           "read_ids"]

#: Published runs kept (with every run they reference) after a successful publish.
KEEP_PUBLISHED = 3
#: Run ids remembered in the pointer (newest first).
POINTER_HISTORY = 20
FORMAT = 1


class PublishConflict(FileExistsError):
    """Another run published the output while this one was being written."""


class StageMismatch(ValueError):
    """A stage was built on other upstream outputs than the run it is part of."""


class NothingPublished(FileNotFoundError):
    """The output has no published run."""


def fingerprint(payload: Any) -> str:
    """A stable hash of a JSON-able ``payload`` (keys sorted; 20 hex digits)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _log(message: str) -> None:
    import sys
    print(f"[kernelbank] {redact(message)}", file=sys.stderr, flush=True)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


# ---------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class RunView:
    """A complete run as its manifest describes it (what readers use).

    Attributes
    ----------
    fs : fsspec.AbstractFileSystem
    root : str
        The output root (protocol-free).
    url : str
        The output root as the user gave it.
    run_id : str
    manifest : dict
        ``stages``: per stage its ``run`` (the run whose prefix holds it), ``folder``,
        ``fingerprint``, ``upstream`` (stage → run and fingerprint it read), ``files``
        and ``errors`` (paths relative to that run's prefix, with ``size`` and ``rows``),
        ``summary``.
    """

    fs: Any
    root: str
    url: str
    run_id: str
    manifest: dict

    @property
    def path(self) -> str:
        """This run's own prefix (protocol-free)."""
        return join(self.root, RUNS, self.run_id)

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this run has (its own and those it builds on), in pipeline order."""
        return tuple(s for s in STAGE_ORDER if s in self.manifest["stages"])

    def has(self, stage: str) -> bool:
        return stage in self.manifest["stages"]

    def _entry(self, stage: str) -> dict:
        if stage not in STAGE_FOLDERS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(STAGE_FOLDERS)}")
        try:
            return self.manifest["stages"][stage]
        except KeyError:
            raise FileNotFoundError(
                f"the published run {self.run_id} of {safe_url(self.url)!r} has no {stage} "
                f"output (it has {list(self.stages)}); run `kernelbank {stage} --output "
                f"{safe_url(self.url)}` first") from None

    def stage_run(self, stage: str) -> str:
        """Id of the run whose prefix holds ``stage``'s output."""
        return self._entry(stage)["run"]

    def fingerprint(self, stage: str) -> str:
        return self._entry(stage)["fingerprint"]

    def stage_path(self, stage: str) -> str:
        """Protocol-free folder of ``stage``'s output (maybe in an older run's prefix)."""
        entry = self._entry(stage)
        return join(self.root, RUNS, entry["run"], entry["folder"])

    def stage_url(self, stage: str) -> str:
        """URL of ``stage``'s output folder."""
        return url_of(self.fs, self.stage_path(stage))

    def stage_files(self, stage: str, suffix: str | None = None) -> list[str]:
        """The files of ``stage`` listed in the manifest (protocol-free paths), optionally
        only those ending in ``suffix`` (e.g. ``".parquet"`` for the table's parts)."""
        entry = self._entry(stage)
        return [join(self.root, RUNS, entry["run"], f["path"]) for f in entry["files"]
                if (suffix is None or f["path"].endswith(suffix)) and _is_part(f["path"])]

    def error_files(self, stage: str | None = None) -> list[str]:
        """Error tables of ``stage`` (default: of every stage of the run)."""
        stages = [stage] if stage else list(self.stages)
        return [join(self.root, RUNS, self._entry(s)["run"], f["path"])
                for s in stages for f in self._entry(s).get("errors", [])]

    def stage_summary(self, stage: str) -> dict:
        return self._entry(stage).get("summary", {})

    @property
    def summary(self) -> dict:
        """This run's ``summary.json``."""
        return read_json(self.fs, join(self.path, SUMMARY)) or {}


def _read_pointer(fs, root: str) -> tuple[dict | None, str | None]:
    current = read_versioned(fs, join(root, POINTER))
    return (json.loads(current.data) if current.data else None), current.token


def check_consistent(manifest: dict) -> None:
    """Raise :class:`StageMismatch` unless every stage read the upstream stages listed.

    Raises
    ------
    StageMismatch
        Naming the stage, the upstream output it was built on, and the one the run has.
    """
    stages = manifest["stages"]
    for name, entry in stages.items():
        for upstream, used in entry.get("upstream", {}).items():
            have = stages.get(upstream)
            if have is None or (have["run"], have["fingerprint"]) != \
                    (used["run"], used["fingerprint"]):
                now = "none" if have is None else f"run {have['run']} ({have['fingerprint']})"
                raise StageMismatch(
                    f"run {manifest['run_id']}: its {name} output was built on the {upstream} "
                    f"output of run {used['run']} ({used['fingerprint']}), but the run's "
                    f"{upstream} is {now}; refusing to mix them — rerun {name}")


def open_run(url: str, run_id: str, *, s3_endpoint: str | None = None) -> RunView:
    """The complete run ``run_id`` of the output ``url`` (published or not)."""
    fs, root = resolve(url, s3_endpoint=s3_endpoint)
    manifest = read_json(fs, join(root, RUNS, run_id, MANIFEST))
    if manifest is None:
        raise FileNotFoundError(f"run {run_id} of {safe_url(url)!r} has no {MANIFEST}: it is "
                                "incomplete or was removed")
    check_consistent(manifest)
    return RunView(fs, root, url, run_id, manifest)


def open_published(url: str, *, s3_endpoint: str | None = None) -> RunView:
    """The run the pointer ``OUTPUT/LATEST.json`` of ``url`` names.

    Raises
    ------
    NothingPublished
        When ``url`` has no pointer (nothing published yet, or not a kernelbank output).
    StageMismatch
        When the published manifest mixes stages built on different upstream outputs.
    """
    fs, root = resolve(url, s3_endpoint=s3_endpoint)
    pointer, _ = _read_pointer(fs, root)
    if pointer is None:
        if fs.exists(join(root, SUMMARY)) and not fs.exists(join(root, MARKER)):
            hint = (" (it has a summary.json at its root: an output of an older kernelbank; "
                    "rerun it into a new --output)")
        else:
            hint = "; run `kernelbank run --output URL` first"
        raise NothingPublished(f"{safe_url(url)!r} holds no published kernelbank run (no "
                               f"{POINTER}){hint}")
    return open_run(url, pointer["run_id"], s3_endpoint=s3_endpoint)


def read_ids(fs, files: list[str], column: str = "id") -> set[str]:
    """Values of ``column`` in the Parquet ``files`` (read in parallel, column only)."""
    import pyarrow.parquet as pq

    def ids(path: str) -> list:
        def read():
            with fs.open(path, "rb") as handle:
                return pq.read_table(handle, columns=[column]).column(column).to_pylist()
        return retried(read)
    with ThreadPoolExecutor(max_workers=16) as pool:
        return {str(v) for part in pool.map(ids, files) for v in part}


def _describe_files(fs, run_path: str, paths: list[str]) -> list[dict]:
    """``path`` (relative to the run), ``size`` and, for Parquet, ``rows`` of each file."""
    import pyarrow.parquet as pq

    def describe(path: str) -> dict:
        info = retried(lambda: fs.info(path))
        item = {"path": path[len(run_path):].lstrip("/"), "size": int(info.get("size") or 0)}
        if path.endswith(".parquet"):
            def rows():
                with fs.open(path, "rb") as handle:
                    return pq.read_metadata(handle).num_rows
            item["rows"] = int(retried(rows))
        return item
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(describe, sorted(paths)))


def _is_part(relative: str) -> bool:
    """Whether a file of a stage folder is one of its outputs: no name below the folder
    starts with ``_`` or ``.`` (the pyarrow convention; ``fit/_inputs.parquet`` and
    ``fit/_pixels/`` are the fit stage's working files, ``_kernelbank.json`` metadata)."""
    return not any(part.startswith(("_", ".")) for part in relative.split("/")[1:])


def _visible(path: str) -> bool:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return not name.startswith(".") and name != STAGE_MARKER


def _files_below(fs, path: str) -> list[str]:
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.find(path) if _visible(p))


# ---------------------------------------------------------------------------- writing
class StageWriter:
    """One stage of a run being written (create with :meth:`RunWriter.stage`).

    Offers what the old staging area offered (``fs``, ``dir(name)``), so a stage's
    ``write_*`` function takes either.

    Parameters
    ----------
    run : RunWriter
    name : str
        The stage (a key of :data:`~kernelbank.io.layout.STAGE_FOLDERS`).
    """

    def __init__(self, run: "RunWriter", name: str):
        self.run, self.name = run, name

    @property
    def fs(self):
        return self.run.fs

    @property
    def folder(self) -> str:
        return STAGE_FOLDERS[self.name]

    @property
    def path(self) -> str:
        """This stage's output folder (protocol-free)."""
        return join(self.run.path, self.folder)

    @property
    def url(self) -> str:
        return url_of(self.fs, self.path)

    def dir(self, name: str) -> str:
        """A folder of this run (``fit``, ``banks``, ``errors``, …), protocol-free."""
        return join(self.run.path, name)

    @property
    def part_prefix(self) -> str:
        """File-name prefix of this attempt's part files: ``<stage>-<attempt>``."""
        return f"{self.name}-{self.run.attempt}"

    @property
    def marker_path(self) -> str:
        return join(self.path, STAGE_MARKER)

    @property
    def fingerprint(self) -> str:
        return self.run.fingerprints[self.name]

    def marker(self) -> dict | None:
        """The stage marker, when this stage is complete with this fingerprint."""
        found = read_json(self.fs, self.marker_path)
        return found if found and found.get("fingerprint") == self.fingerprint else None

    @property
    def complete(self) -> bool:
        return self.marker() is not None

    def _error_files(self) -> list[str]:
        prefix = f"{self.name}-"
        return [p for p in _files_below(self.fs, self.dir(ERRORS))
                if p.rsplit("/", 1)[-1].startswith(prefix)]

    def completed_parts(self) -> tuple[list[str], list[str]]:
        """Part files earlier attempts completed: ``(ok_files, error_files)``."""
        mine = f"{self.part_prefix}-"
        earlier = lambda p: not p.rsplit("/", 1)[-1].startswith(mine)  # noqa: E731
        # part files are this stage's own rows, directly in its folder; ``_``-names there
        # (the fit stage's input manifest and pixel cache) are not
        ours = f"{self.name}-"
        ok = [p for p in _files_below(self.fs, self.path) if p.endswith(".parquet")
              and p.rsplit("/", 1)[0] == self.path.rstrip("/")
              and p.rsplit("/", 1)[-1].startswith(ours)]
        return [p for p in ok if earlier(p)], [p for p in self._error_files() if earlier(p)]

    def completed_ids(self, column: str = "id") -> set[str]:
        """Record ids already written by earlier attempts (good rows and error rows)."""
        ok, errors = self.completed_parts()
        return read_ids(self.fs, ok + errors, column)

    def begin(self, *, resumable: bool = False) -> None:
        """Start (or restart) the stage; without ``resumable``, drop a previous attempt's files."""
        self.run.check_lease()
        if resumable:
            return
        with contextlib.suppress(FileNotFoundError):
            remove_tree(self.fs, self.path)
        for path in self._error_files():
            remove_tree(self.fs, path)

    def finish(self, summary: dict) -> dict:
        """Write the stage marker (last): its files, rows, fingerprints and summary."""
        self.run.check_lease()
        faults.fault_point(f"{self.name}.finish")
        data = [p for p in _files_below(self.fs, self.path)]
        errors = self._error_files()
        entry = {
            "stage": self.name, "run": self.run.run_id, "folder": self.folder,
            "fingerprint": self.fingerprint,
            "upstream": {d: {"run": self.run.stage_run(d),
                             "fingerprint": self.run.fingerprints_all[d]}
                         for d in STAGE_DEPENDS[self.name]},
            "files": _describe_files(self.fs, self.run.path, data),
            "errors": _describe_files(self.fs, self.run.path, errors),
            "summary": _scrub(summary), "completed": _now(), "attempt": self.run.attempt,
        }
        write_json(self.fs, self.marker_path, entry)
        return entry

    def run_once(self, write: Callable[["StageWriter"], dict], *,
                 resumable: bool = False) -> dict:
        """The stage's summary: from its marker if complete, else ``write(self)``."""
        done = self.marker()
        if done is not None:
            _log(f"{self.name}: complete in run {self.run.run_id} (resumed), skipped")
            return done["summary"]
        self.begin(resumable=resumable)
        summary = write(self)
        return self.finish(summary)["summary"]


@dataclass
class RunWriter:
    """A run being written; create with :meth:`open` (see the module docstring)."""

    fs: Any
    root: str
    url: str
    run_id: str
    attempt: str
    stages: tuple[str, ...]
    fingerprints: dict[str, str]
    fingerprints_all: dict[str, str]
    run_fingerprint: str
    inherits: dict[str, str]
    base: RunView | None
    base_token: str | None
    pointer: dict | None
    lease: Lease
    resumed: bool
    command: str = ""
    describe: dict = field(default_factory=dict)
    published: RunView | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, url: str, specs: Mapping[str, Any], *, input_url: str | None = None,
             overwrite: bool = False, s3_endpoint: str | None = None, command: str = "",
             describe: Mapping[str, Any] | None = None, inherit: bool = True,
             lease_timeout_s: float = LEASE_TIMEOUT_S) -> "RunWriter":
        """Check ``url``, then create a new run of ``specs``' stages or resume one.

        Parameters
        ----------
        url : str
            Output root (local path or fsspec URL).
        specs : mapping of stage name to JSON-able settings
            The stages this run writes, each with what determines its result (settings,
            input description). Stages not listed are taken from the published run
            when nothing upstream of them is rewritten.
        input_url : str, optional
            Checked not to overlap the output.
        overwrite : bool, default=False
            Allow replacing stages the published run already has.
        command : str
            Recorded in the run marker (``"run"``, ``"reduce"``, …).
        describe : mapping, optional
            Extra JSON recorded in the run marker and manifest (input, configuration).
        inherit : bool, default=True
            Reuse the published run's other stages (a stage rerun); ``False`` for a run
            that stands alone (``kernelbank run``).

        Raises
        ------
        ValueError
            Unknown stage, bucket/filesystem root, input and output overlapping.
        FileExistsError
            Not a kernelbank output; stages already published without ``overwrite``;
            the same run is being written by a live driver.
        FileNotFoundError
            A stage needs an upstream output that neither this run nor the published
            run has.
        """
        unknown = [s for s in specs if s not in STAGE_FOLDERS]
        if unknown or not specs:
            raise ValueError(f"stages must be a non-empty subset of {list(STAGE_FOLDERS)}, "
                             f"got {list(specs)}")
        fs, root = resolve(url, s3_endpoint=s3_endpoint)
        if input_url and input_url != "-":
            check_not_nested(input_url, url, s3_endpoint=s3_endpoint)
        if not check_output(fs, root, url):
            create_exclusive(fs, join(root, MARKER), json_bytes(
                {"kind": "kernelbank-output", "format": FORMAT, "created": _now(),
                 "note": "kernelbank owns this prefix: runs/ and LATEST.json are managed by "
                         "it; old runs are deleted automatically"}))
        pointer, token = _read_pointer(fs, root)
        base = open_run(url, pointer["run_id"], s3_endpoint=s3_endpoint) if pointer else None
        stages = tuple(s for s in STAGE_ORDER if s in specs)
        for stage in stages:
            for need in STAGE_DEPENDS[stage]:
                if need not in stages and not (base and base.has(need)):
                    raise FileNotFoundError(
                        f"the {stage} stage reads the {need} output, which "
                        f"{safe_url(url)!r} does not have; run `kernelbank {need} --output "
                        f"{safe_url(url)}` (or `kernelbank run`) first")
        clash = [s for s in stages if base and base.has(s)]
        if clash and not overwrite:
            raise FileExistsError(
                f"output {safe_url(url)!r} already holds {', '.join(clash)} (published run "
                f"{base.run_id}); pass --overwrite (overwrite=True) to publish a new run that "
                f"replaces them (older runs are kept until {KEEP_PUBLISHED} newer ones are "
                "published), or choose another --output")
        dropped = set().union(*(downstream(s) for s in stages)) - set(stages)
        inherits = {s: base.stage_run(s) for s in base.stages
                    if s not in stages and s not in dropped} if base and inherit else {}
        fingerprints: dict[str, str] = {}
        every = {s: base.fingerprint(s) for s in inherits}
        for stage in stages:
            upstream = {d: every[d] for d in STAGE_DEPENDS[stage]}
            fingerprints[stage] = every[stage] = fingerprint(
                {"stage": stage, "spec": specs[stage], "upstream": upstream})
        run_fp = fingerprint({"stages": fingerprints, "inherits": inherits})
        attempt = uuid.uuid4().hex[:8]
        published = set((pointer or {}).get("history", []))
        run_id, lease, resumed = None, None, False
        busy: list[str] = []
        for candidate, marker in sorted(_list_runs(fs, root).items(), reverse=True):
            if candidate in published or marker.get("fingerprint") != run_fp:
                continue
            try:
                lease = Lease.acquire(fs, join(root, RUNS, candidate, LEASE), attempt,
                                      timeout_s=lease_timeout_s)
            except LeaseBusy as error:
                busy.append(f"runs/{candidate}: {error}")
                continue
            run_id, resumed = candidate, True
            break
        if run_id is None:
            if busy:
                raise FileExistsError(
                    f"another kernelbank driver is writing this same run to {safe_url(url)!r} "
                    f"({busy[0]}); wait for it, or stop it and rerun this command to resume")
            run_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{run_fp[:8]}-" \
                     f"{uuid.uuid4().hex[:4]}"
            lease = Lease.acquire(fs, join(root, RUNS, run_id, LEASE), attempt,
                                  timeout_s=lease_timeout_s)
            create_exclusive(fs, join(root, RUNS, run_id, RUN_MARKER), json_bytes(
                {"run_id": run_id, "fingerprint": run_fp, "stages": list(stages),
                 "stage_fingerprints": fingerprints, "inherits": inherits,
                 "base": base.run_id if base else None, "command": command,
                 "created": _now(), **_scrub(dict(describe or {}))}))
        lease.start_heartbeat()
        run = cls(fs, root, url, run_id, attempt, stages, fingerprints, every, run_fp, inherits,
                  base, token, pointer, lease, resumed, command, dict(describe or {}))
        _log(f"{'resuming' if resumed else 'writing'} run {run_id} of {safe_url(url)} "
             f"({', '.join(stages)}"
             + (f"; reusing {', '.join(f'{s} of run {r}' for s, r in inherits.items())}"
                if inherits else "") + ")")
        try:
            run._collect_garbage(keep_extra={run_id})
        except Exception as error:      # clean-up is never worth failing a run for
            _log(f"warning: could not clean old runs: {type(error).__name__}: {error}")
        return run

    # ------------------------------------------------------------------ stages
    @property
    def path(self) -> str:
        """This run's prefix (protocol-free)."""
        return join(self.root, RUNS, self.run_id)

    def stage(self, name: str) -> StageWriter:
        """The writer of stage ``name`` (one of the stages this run writes)."""
        if name not in self.stages:
            raise ValueError(f"run {self.run_id} writes {list(self.stages)}, not {name!r}")
        return StageWriter(self, name)

    def stage_run(self, name: str) -> str:
        """Id of the run that holds (or will hold) ``name``'s output."""
        if name in self.stages:
            return self.run_id
        if name in self.inherits:
            return self.inherits[name]
        raise FileNotFoundError(f"run {self.run_id} neither writes nor reuses a {name} output")

    def stage_path(self, name: str) -> str:
        """Protocol-free folder of ``name``'s output (this run's, or the one reused)."""
        return join(self.root, RUNS, self.stage_run(name), STAGE_FOLDERS[name])

    def stage_url(self, name: str) -> str:
        return url_of(self.fs, self.stage_path(name))

    def check_lease(self) -> None:
        """Raise if another driver took this run over (this one stalled too long)."""
        if self.lease.lost or not self.lease.refresh():
            raise RuntimeError(f"run {self.run_id} was taken over by another driver after this "
                               "one stopped renewing its lease; stopping without writing more")

    # ------------------------------------------------------------------ publishing
    def _manifest(self) -> dict:
        stages: dict[str, dict] = {}
        for name in STAGE_ORDER:
            if name in self.stages:
                marker = self.stage(name).marker()
                if marker is None:
                    raise RuntimeError(f"run {self.run_id}: stage {name} is not complete; "
                                       "finish every stage before publishing")
                stages[name] = marker
            elif name in self.inherits:
                stages[name] = self.base.manifest["stages"][name]
        manifest = {"format": FORMAT, "run_id": self.run_id, "fingerprint": self.run_fingerprint,
                    "command": self.command, "created": _now(), "output": safe_url(self.url),
                    **_scrub(self.describe), "stages": stages}
        check_consistent(manifest)
        return manifest

    def publish(self, summary: Mapping[str, Any]) -> RunView:
        """Write the manifest and ``summary.json``, then switch the pointer to this run.

        Returns the published :class:`RunView`. Removes runs no longer kept afterwards.

        Raises
        ------
        PublishConflict
            When another run published the output after this one started; this run
            stays complete but unpublished (rerun the same command to publish it).
        """
        self.check_lease()
        manifest = self._manifest()
        summary = _scrub({**summary, "run_id": self.run_id, "output": safe_url(self.url),
                          "stage_runs": {s: e["run"] for s, e in manifest["stages"].items()}})
        write_json(self.fs, join(self.path, SUMMARY), summary)
        write_json(self.fs, join(self.path, MANIFEST), manifest)
        faults.fault_point("publish")
        history = [self.run_id] + [h for h in (self.pointer or {}).get("history", [])
                                   if h != self.run_id]
        pointer = {"format": FORMAT, "run_id": self.run_id, "published": _now(),
                   "history": history[:POINTER_HISTORY]}
        self.check_lease()
        if replace_if(self.fs, join(self.root, POINTER), json_bytes(pointer),
                      self.base_token) is None:
            now, _ = _read_pointer(self.fs, self.root)
            raise PublishConflict(
                f"another run ({(now or {}).get('run_id')}) published {safe_url(self.url)!r} "
                f"while run {self.run_id} was being written; this run is complete but not "
                "published (nothing was mixed). Rerun the same command with --overwrite to "
                "publish it.")
        faults.fault_point("published")
        self.pointer, self.published = pointer, RunView(self.fs, self.root, self.url,
                                                        self.run_id, manifest)
        _log(f"published run {self.run_id} as {safe_url(self.url)}")
        try:
            self._collect_garbage()
        except Exception as error:
            _log(f"warning: could not clean old runs: {type(error).__name__}: {error}")
        self.close()
        return self.published

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Stop the heartbeat and free the lease (the run stays, complete or resumable)."""
        with contextlib.suppress(Exception):
            self.lease.release()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is not None and self.published is None:
            reason = "stopped" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
            _log(f"run {self.run_id} {reason} ({kind.__name__}); completed stages are kept: "
                 "rerun the same command to resume")
        self.close()

    # ------------------------------------------------------------------ clean-up
    def _keep(self) -> tuple[set[str], dict[str, dict]]:
        """Runs to keep: the last published ones and what they (or live runs) reference."""
        runs = _list_runs(self.fs, self.root)
        pointer, _ = _read_pointer(self.fs, self.root)
        keep: set[str] = set()
        for run_id in (pointer or {}).get("history", [])[:KEEP_PUBLISHED]:
            manifest = read_json(self.fs, join(self.root, RUNS, run_id, MANIFEST))
            keep.add(run_id)
            keep |= {e["run"] for e in (manifest or {}).get("stages", {}).values()}
        for run_id, marker in runs.items():
            if holder_alive(Lease.holder(self.fs, join(self.root, RUNS, run_id, LEASE))):
                keep.add(run_id)
                keep |= set(marker.get("inherits", {}).values())
        return keep, runs

    def _collect_garbage(self, keep_extra: set[str] = frozenset()) -> None:
        if not self.fs.exists(join(self.root, MARKER)):
            return                                  # never delete outside a marked root
        keep, runs = self._keep()
        keep |= set(keep_extra) | {self.run_id} | set(self.inherits.values())
        for run_id in sorted(set(runs) - keep):
            _delete_run(self.fs, join(self.root, RUNS, run_id), self.attempt)
        for orphan in _orphans(self.fs, self.root, set(runs) | keep):
            _delete_run(self.fs, orphan, self.attempt)


def _list_runs(fs, root: str) -> dict[str, dict]:
    """Run id → run marker of every run under ``root/runs`` that carries one."""
    folder = join(root, RUNS)
    fs.invalidate_cache(folder)
    if not fs.exists(folder):
        return {}
    found = {}
    for entry in fs.ls(folder, detail=False):
        run_id = entry.rstrip("/").rsplit("/", 1)[-1]
        marker = read_json(fs, join(folder, run_id, RUN_MARKER))
        if marker is not None and marker.get("run_id") == run_id:
            found[run_id] = marker
    return found


def _orphans(fs, root: str, known: set[str]) -> list[str]:
    """Run folders holding nothing but a stale lease (a driver died while creating them)."""
    folder = join(root, RUNS)
    if not fs.exists(folder):
        return []
    out = []
    for entry in fs.ls(folder, detail=False):
        run_id = entry.rstrip("/").rsplit("/", 1)[-1]
        if run_id in known:
            continue
        inside = {p.rsplit("/", 1)[-1] for p in fs.ls(join(folder, run_id), detail=False)}
        lease = Lease.holder(fs, join(folder, run_id, LEASE)) if LEASE in inside else None
        if inside <= {LEASE} and not holder_alive(lease):
            out.append(join(folder, run_id))
    return out


def _delete_run(fs, path: str, attempt: str) -> None:
    """Delete a run folder if no live driver holds it; markers first, run marker last.

    Taking the lease first makes the deletion exclusive: a driver resuming the run at
    the same moment either got the lease (and the run is skipped here) or finds it gone.
    """
    try:
        lease = Lease.acquire(fs, join(path, LEASE), attempt)
    except LeaseBusy:
        return
    children = fs.ls(path, detail=False) if fs.exists(path) else []
    # first what makes the run (or a stage) look complete, so a half-deleted run is
    # never taken for a complete one, then the data, then the run marker, the lease
    for child in [join(path, MANIFEST)] + [join(c, STAGE_MARKER) for c in children]:
        if fs.exists(child):
            remove_tree(fs, child)
    for child in children:
        if child.rstrip("/").rsplit("/", 1)[-1] not in (RUN_MARKER, LEASE, MANIFEST):
            remove_tree(fs, child)
    remove_tree(fs, join(path, RUN_MARKER))
    lease.lost = True                   # the lease goes with the folder
    lease._stop.set()
    remove_tree(fs, path)
