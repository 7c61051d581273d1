"""ClassStats files: one .npz of plain arrays (no pickle), written and read by kernelbank.io."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.io.bank_file import save_bank
from kernelbank.io.stats_file import load_stats, save_stats, stats_to_arrays


def _rich_stats():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(9, 16, 16)).cumsum(1)
    labels = ["brick", "grass wall", "été"] * 3
    return kb.ClassStats.from_fit(kb.fit(images, kb.Basis.isotropic(radius=2, dilation=2)),
                                  labels, reservoir_size=2, seed=5)


def _assert_identical(a: kb.ClassStats, b: kb.ClassStats):
    assert (a.scale, a.reservoir_size, a.seed, a.classes) == (b.scale, b.reservoir_size,
                                                              b.seed, b.classes)
    assert a.basis.describe() == b.basis.describe()
    assert a.basis.ring_distances == b.basis.ring_distances
    assert torch.equal(a.basis.offsets, b.basis.offsets)
    assert torch.equal(a.basis.weights, b.basis.weights)
    for name in a.classes:
        x, y = a[name].to_dict(), b[name].to_dict()
        for key, value in x.items():
            np.testing.assert_array_equal(value, y[key], err_msg=key)


def test_class_stats_npz_round_trip(tmp_path):
    stats = _rich_stats()
    path = tmp_path / "stats_d2.npz"
    save_stats(stats, path)
    _assert_identical(stats, load_stats(path))
    buffer = io.BytesIO()
    save_stats(stats, buffer)
    _assert_identical(stats, load_stats(io.BytesIO(buffer.getvalue())))
    save_stats(stats, "memory://banks/stats_d2.npz")
    _assert_identical(stats, load_stats("memory://banks/stats_d2.npz"))
    empty = kb.ClassStats.empty(reservoir_size=7, seed=2)
    save_stats(empty, tmp_path / "empty.npz")
    back = load_stats(tmp_path / "empty.npz")
    assert back.basis is None and back.classes == [] and back.reservoir_size == 7
    # plain numpy reads the documented layout without kernelbank and without pickle
    with np.load(path, allow_pickle=False) as archive:
        c = stats.classes.index("grass wall")
        np.testing.assert_array_equal(archive["sum_gram"][c], stats["grass wall"].sum_gram)
        assert archive["n"][c] == 3 and archive["sample_count"].tolist() == [2, 2, 2]


def test_class_stats_load_refuses_pickles_and_objects(tmp_path):
    stats = _rich_stats()
    pickled = tmp_path / "stats.pkl"
    pickled.write_bytes(pickle.dumps(stats.to_dict(), protocol=5))
    with pytest.raises(ValueError, match="not a kernelbank ClassStats"):
        load_stats(pickled)
    arrays = stats_to_arrays(stats)
    arrays["sample"] = np.array([object()], dtype=object)
    objects = tmp_path / "objects.npz"
    np.savez(objects, **arrays)
    with pytest.raises(ValueError, match="pickled data and object arrays are refused"):
        load_stats(objects)
    other = tmp_path / "bank.npz"
    save_bank(kb.KernelBank.gabor(radius=1), str(other))
    with pytest.raises(ValueError, match="no header_json"):
        load_stats(other)
    arrays = stats_to_arrays(stats)
    del arrays["sum_gram"]
    partial = tmp_path / "partial.npz"
    np.savez(partial, **arrays)
    with pytest.raises(ValueError, match="lacks the array 'sum_gram'"):
        load_stats(partial)




def test_class_stats_reads_version_1_files():
    # version 1 kept G, h and Σx² of grey classes instead of A = [[G, h], [hᵀ, Σx²]]
    stats = _rich_stats()
    m = stats.basis.n_components
    arrays = stats_to_arrays(stats)
    header = json.loads(bytes(arrays["header_json"]).decode())
    arrays["header_json"] = np.frombuffer(json.dumps({**header, "version": 1}).encode(), np.uint8)
    gram = arrays["sum_gram"]
    arrays.update(sum_gram=gram[:, :m, :m], sum_rhs=gram[:, :m, m], sum_sq=gram[:, m, m])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    _assert_identical(load_stats(buffer), stats)
