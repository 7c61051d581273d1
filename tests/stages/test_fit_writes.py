"""The fit actor writes its own part files and returns counts and partial class statistics.

The actor (:class:`kernelbank.stages.fit.StatisticsFitter` with a
:class:`kernelbank.io.tables.PartWriter`) runs in-process on rows decoded by the real
reader from real PNG files; its returned statistics, merged in any order, must equal
``kb.ClassStats.from_fit`` of ``kb.fit`` on the same train images — what the reduce
stage would compute from the table — and its part files must hold every row once.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import kernelbank as kb
from kernelbank.config import FitConfig
from kernelbank.io.batches import images_from_batch
from kernelbank.io.storage import read_filesystem
from kernelbank.io.tables import PartWriter
from kernelbank.stages.common import TRAIN_SPLITS
from kernelbank.stages.fit import StatisticsFitter, fit_metadata

from .pipeline_data import decoded_rows

CONFIG = FitConfig(radius=1, dilations=(1, 2))


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    return decoded_rows(tmp_path_factory.mktemp("fitwrites") / "images", classes=3,
                        min_side=CONFIG.min_side)


def test_fit_writes_return_the_class_statistics_of_their_rows(decoded, tmp_path):
    fs, _ = read_filesystem(str(tmp_path))
    writer = PartWriter(fs, str(tmp_path / "fit"), str(tmp_path / "errors"), "fit-a1")
    fitter = StatisticsFitter(CONFIG, 2, 1, writer, fit_metadata(CONFIG, 2))
    # two batches that share classes and splits (rows alternate between them)
    results = [fitter(decoded.take(list(range(k, decoded.num_rows, 2)))) for k in (0, 1)]
    # the rows are in the part files, each once, and the counts say so
    files = sorted((tmp_path / "fit").glob("fit-a1-*.parquet"))
    ids = [i for f in files for i in pq.read_table(f).column("id").to_pylist()]
    assert len(files) == 2 and sorted(ids) == sorted(decoded.column("id").to_pylist())
    assert sum(sum(n for k, n in r["counts"].items() if k[0] == "ok") for r in results) == \
        decoded.num_rows
    # the reference: kb.fit on the train images, class statistics of the whole set
    splits = decoded.column("split").to_pylist()
    train = [i for i, s in enumerate(splits) if s in TRAIN_SPLITS]
    images = images_from_batch(decoded)
    labels = decoded.column("label").to_pylist()
    fitted = kb.fit([images[i] for i in train], kb.Basis.full(1), dilations=[1, 2])
    for index, entry in enumerate(((1, 1), (1, 2))):
        expected = kb.ClassStats.from_fit(fitted, [labels[i] for i in train], scale=index)
        # merge order is free: the sums are exact
        parts = [kb.ClassStats.from_dict(r["stats"][entry]) for r in results
                 if entry in r["stats"]]
        assert len(parts) == 2, "both halves hold train rows: a broken merge would show"
        for merged in (parts[0] + parts[1], parts[1] + parts[0]):
            assert merged.classes == expected.classes
            for name in merged.classes:
                assert merged[name].n == expected[name].n
                assert merged[name].n_pixels == expected[name].n_pixels
                for field in ("sum_coef", "sum_outer", "sum_gram", "sum_rhs"):
                    np.testing.assert_allclose(getattr(merged[name], field),
                                               getattr(expected[name], field),
                                               rtol=1e-5, atol=1e-4)


def test_a_retried_batch_rewrites_its_own_file(decoded, tmp_path):
    fs, _ = read_filesystem(str(tmp_path))
    writer = PartWriter(fs, str(tmp_path / "fit"), str(tmp_path / "errors"), "fit-a1")
    fitter = StatisticsFitter(CONFIG, 2, 1, writer)
    fitter(decoded)
    fitter(decoded)                                 # the same block again (a retry)
    assert len(list((tmp_path / "fit").glob("*.parquet"))) == 1


def test_a_batch_of_error_rows_only_is_written_and_counted(decoded, tmp_path):
    import pyarrow as pa
    fs, _ = read_filesystem(str(tmp_path))
    writer = PartWriter(fs, str(tmp_path / "fit"), str(tmp_path / "errors"), "fit-a1")
    fitter = StatisticsFitter(CONFIG, 2, 1, writer, fit_metadata(CONFIG, 2))
    batch = decoded.slice(0, 2)
    bad = batch.set_column(batch.schema.get_field_index("reason"), "reason",
                           pa.array(["not decodable"] * 2, pa.string()))
    bad = bad.set_column(bad.schema.get_field_index("stage"), "stage",
                         pa.array(["decode"] * 2, pa.string()))
    result = fitter(bad)
    assert result["stats"] == {} and result["counts"][("error", "decode")] == 2
    assert not any(k[0] == "ok" for k in result["counts"])
    assert not (tmp_path / "fit").exists() and len(list((tmp_path / "errors").iterdir())) == 1


def test_written_window_sums_are_packed_float64_that_read_back_exactly(decoded, tmp_path):
    import pyarrow as pa
    from kernelbank.stages.table import column_array, unpack_columns
    fs, _ = read_filesystem(str(tmp_path))
    writer = PartWriter(fs, str(tmp_path / "fit"), str(tmp_path / "errors"), "fit-a1")
    StatisticsFitter(CONFIG, 2, 1, writer)(decoded)
    table = pq.read_table(next((tmp_path / "fit").glob("*.parquet")))
    assert pa.types.is_fixed_size_binary(table.schema.field("sums").type)
    images = images_from_batch(decoded)
    ids = decoded.column("id").to_pylist()
    order = [ids.index(i) for i in table.column("id").to_pylist()]
    row, _ = StatisticsFitter(CONFIG)._statistics([images[i] for i in order],
                                                  [ids[i] for i in order])
    np.testing.assert_array_equal(column_array(table, "sums"), row["sums"])
    # a slice (an Arrow offset into the buffer) reads its own rows
    np.testing.assert_array_equal(column_array(table.slice(1, 2), "sums"), row["sums"][1:3])
    listed = unpack_columns(table)
    assert pa.types.is_fixed_size_list(listed.schema.field("sums").type)
    np.testing.assert_array_equal(np.array(listed.column("sums").to_pylist()), row["sums"])


def test_a_batch_is_computed_and_written_in_slices_as_one_part(decoded, tmp_path, monkeypatch):
    """A block of more than ``ROW_GROUP_ROWS`` rows is computed and written a slice at a
    time (memory holds one slice's columns): one part file in row groups of the slice,
    the same rows, statistics and counts as computing the block whole, an error row in
    the middle in ``errors/``, and every good row's pixels in the cache."""
    import dataclasses

    import pyarrow as pa

    from kernelbank.stages import fit as fit_stage
    config = dataclasses.replace(CONFIG, cache_pixels=True)
    where = decoded.schema.get_field_index
    reason = [None] * decoded.num_rows
    stage = [None] * decoded.num_rows
    reason[4], stage[4] = "not decodable", "decode"
    batch = decoded.set_column(where("reason"), "reason", pa.array(reason, pa.string()))
    batch = batch.set_column(where("stage"), "stage", pa.array(stage, pa.string()))
    whole = StatisticsFitter(config, 2, 1)(batch)             # no writer: the rows in memory
    results = {}
    for rows in (3, 1 << 20):
        monkeypatch.setattr(fit_stage, "ROW_GROUP_ROWS", rows)
        folder = tmp_path / str(rows)
        fs, _ = read_filesystem(str(folder))
        writer = PartWriter(fs, str(folder / "fit"), str(folder / "errors"), "fit-a1",
                            cache_dir=str(folder / "cache"), row_group_rows=rows)
        results[rows] = StatisticsFitter(config, 2, 1, writer, fit_metadata(config, 2))(batch)
    files = list((tmp_path / "3" / "fit").glob("*.parquet"))
    assert len(files) == 1
    part = pq.ParquetFile(files[0])
    groups = [part.metadata.row_group(g).num_rows for g in range(part.metadata.num_row_groups)]
    assert groups == [sum(r is None for r in reason[at:at + 3])
                      for at in range(0, decoded.num_rows, 3)]      # one per slice: 3, 2, 3, …
    table = part.read()
    good = whole.filter(pa.compute.is_null(whole.column("reason")))
    assert table.column("id").to_pylist() == good.column("id").to_pylist()
    np.testing.assert_array_equal(np.stack(table.column("coef").to_numpy(zero_copy_only=False)),
                                  np.stack(good.column("coef").to_numpy(zero_copy_only=False)))
    errors = pq.read_table(next((tmp_path / "3" / "errors").glob("*.parquet")))
    assert errors.column("id").to_pylist() == [decoded.column("id")[4].as_py()]
    cache = pq.read_table(next((tmp_path / "3" / "cache").glob("*.parquet")))
    assert cache.column("id").to_pylist() == good.column("id").to_pylist()
    sliced, single = results[3], results[1 << 20]
    assert sliced["counts"] == single["counts"] and sliced["rows"] == decoded.num_rows
    for entry, stats in single["stats"].items():
        a, b = kb.ClassStats.from_dict(sliced["stats"][entry]), kb.ClassStats.from_dict(stats)
        for name in b.classes:
            np.testing.assert_allclose(a[name].sum_gram, b[name].sum_gram, rtol=1e-10)
