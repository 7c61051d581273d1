"""Staging and swapping outputs on a local disk and on a real S3 endpoint (no Ray)."""

from __future__ import annotations

import fsspec
import pytest

from kernelbank.io.layout import Staging
from kernelbank.io.storage import resolve


def _write(fs, path: str, text: str) -> None:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as f:
        f.write(text)


def _tree(fs, root: str) -> dict[str, str]:
    return {p[len(root) + 1:]: fs.cat(p).decode() for p in sorted(fs.find(root))}


def _exercise(url: str) -> None:
    first = Staging.open(url)
    _write(first.fs, first.dir("fit/a.parquet"), "run1")
    _write(first.fs, first.dir("fit/b.parquet"), "run1")
    _write(first.fs, first.dir("summary.json"), "run1")
    first.commit()
    fs, root = resolve(url)
    assert _tree(fs, root) == {"fit/a.parquet": "run1", "fit/b.parquet": "run1",
                               "summary.json": "run1"}
    with pytest.raises(FileExistsError, match="--overwrite"):
        Staging.open(url)
    second = Staging.open(url, overwrite=True)
    _write(second.fs, second.dir("fit/a.parquet"), "run2")
    _write(second.fs, second.dir("summary.json"), "run2")
    assert _tree(fs, root)["fit/a.parquet"] == "run1"       # untouched until commit
    second.commit()
    assert _tree(fs, root) == {"fit/a.parquet": "run2", "summary.json": "run2"}  # no stale b
    # a stage replaces only its own folder and its own error files
    _write(fs, f"{root}/errors/fit-000000.parquet", "fit-err")
    _write(fs, f"{root}/errors/features-000000.parquet", "feat-err")
    stage = Staging.open(url, owned=("fit", "errors/fit-"), overwrite=True)
    _write(stage.fs, stage.dir("fit/c.parquet"), "run3")
    stage.commit()
    assert _tree(fs, root) == {"fit/c.parquet": "run3", "summary.json": "run2",
                               "errors/features-000000.parquet": "feat-err"}
    aborted = Staging.open(url, owned=("banks",))
    _write(aborted.fs, aborted.dir("banks/x"), "never")
    aborted.abort()
    assert "banks/x" not in _tree(fs, root)
    parent = root.rsplit("/", 1)[0]
    assert not [p for p in fs.find(parent) if ".partial-" in p]


def test_staging_local(tmp_path):
    _exercise(str(tmp_path / "out"))


@pytest.mark.s3
def test_staging_s3(s3_endpoint, s3_bucket):
    _exercise(f"s3://{s3_bucket}/out")
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    assert fs.exists(f"{s3_bucket}/out/summary.json")
