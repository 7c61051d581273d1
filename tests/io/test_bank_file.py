"""Bank files: one .npz with a JSON header, local and through fsspec, no pickle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kernelbank as kb
from kernelbank.io.bank_file import load_bank, save_bank


def _stats() -> kb.ClassStats:
    images = np.random.default_rng(3).normal(size=(24, 18, 18)).cumsum(axis=1)
    return kb.ClassStats.from_fit(kb.fit(images, kb.Basis.isotropic(radius=2)),
                                  ["a"] * 12 + ["b"] * 12)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_round_trip(tmp_path, where):
    bank = kb.KernelBank.concat([kb.KernelBank.from_stats(_stats(), "pca", n_components=1),
                                 kb.KernelBank.gabor(radius=2, n_orientations=2)])
    url = str(tmp_path / "bank.npz") if where == "local" else "memory://banks/test/bank.npz"
    save_bank(bank, url)
    again = load_bank(url)
    assert torch.equal(again.kernels, bank.kernels)
    assert torch.equal(again.dilations, bank.dilations)
    assert torch.equal(again.class_index, bank.class_index)
    torch.testing.assert_close(again.explained_variance, bank.explained_variance, equal_nan=True)
    assert (again.class_names, again.method, again.kernel_names) == \
        (bank.class_names, bank.method, bank.kernel_names)
    assert again.metadata["parts"][0]["counts"] == {"a": 12, "b": 12}
    if where == "local":   # readable without kernelbank, no pickle
        archive = np.load(url, allow_pickle=False)
        np.testing.assert_array_equal(archive["kernels"], bank.kernels.numpy())
        (tmp_path / "junk.npz").write_bytes(b"not a bank")
        with pytest.raises(ValueError, match="not a kernelbank bank file"):
            load_bank(str(tmp_path / "junk.npz"))
