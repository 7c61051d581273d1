"""A failing fit group is split and retried: only images that fail alone become error rows.

The fit actor (:class:`kernelbank.stages.fit.StatisticsFitter`, a plain class that Ray
runs as an actor) is called directly on rows decoded by the real reader from real PNG
files. Failures are injected through :mod:`kernelbank.faults`, the switch production
code carries for tests: a group larger than a limit fails like a device out of memory,
and a poisoned record fails in any group.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from kernelbank import faults
from kernelbank.config import FitConfig
from kernelbank.stages.fit import StatisticsFitter

from .pipeline_data import decoded_rows

CONFIG = FitConfig(radius=1, dilations=(1, 2))


@pytest.fixture(scope="module")
def decoded(tmp_path_factory):
    return decoded_rows(tmp_path_factory.mktemp("isolation") / "images", classes=2,
                        min_side=CONFIG.min_side)


def _fit(batch):
    out = StatisticsFitter(CONFIG)(batch)
    return out, dict(zip(out.column("id").to_pylist(), out.column("coef").to_pylist()))


def test_out_of_memory_groups_are_split_until_they_fit(decoded, monkeypatch):
    _, clean = _fit(decoded)
    monkeypatch.setenv(faults.TEST_FLAG_ENV, "1")
    monkeypatch.setenv(faults.GROUP_LIMIT_ENV, "2")
    out, split = _fit(decoded)
    assert out.column("reason").null_count == out.num_rows == 16      # nothing lost
    for rid, coef in clean.items():
        # same images, solved in groups of 2 instead of 16: the same numbers
        np.testing.assert_allclose(split[rid], coef, rtol=1e-6, atol=1e-7)


def test_a_record_that_fails_alone_is_the_only_error_row(decoded, monkeypatch):
    _, clean = _fit(decoded)
    poisoned = decoded.column("id")[5].as_py()
    monkeypatch.setenv(faults.TEST_FLAG_ENV, "1")
    monkeypatch.setenv(faults.POISON_IDS_ENV, poisoned)
    out, coefs = _fit(decoded)
    failed = out.filter(pc.is_valid(out.column("reason")))
    assert failed.column("id").to_pylist() == [poisoned]
    assert failed.column("stage").to_pylist() == ["fit"]
    assert "injected failure" in failed.column("reason")[0].as_py()
    for rid, coef in clean.items():
        if rid != poisoned:
            np.testing.assert_allclose(coefs[rid], coef, rtol=1e-6, atol=1e-7)


def test_faults_are_inert_without_the_test_switch(decoded, monkeypatch):
    monkeypatch.delenv(faults.TEST_FLAG_ENV, raising=False)
    monkeypatch.setenv(faults.POISON_IDS_ENV, decoded.column("id")[0].as_py())
    out, _ = _fit(decoded)
    assert out.column("reason").null_count == out.num_rows


class _CountingFitter(StatisticsFitter):
    """The real fitter, recording how many images each computation got."""

    def __init__(self, config):
        super().__init__(config)
        self.computations: list[int] = []

    def _statistics(self, images, ids):
        self.computations.append(len(images))
        return super()._statistics(images, ids)


def test_computations_are_sized_by_pixels(decoded):
    from dataclasses import replace
    _, clean = _fit(decoded)
    pixels = int(np.prod(decoded.column("shape")[0].as_py()))
    assert {tuple(s) for s in decoded.column("shape").to_pylist()} == \
        {tuple(decoded.column("shape")[0].as_py())}            # one shape: one group of 16
    fitter = _CountingFitter(replace(CONFIG, batch_pixels=5 * pixels + 3))
    out = fitter(decoded)
    assert fitter.computations == [5, 5, 5, 1]
    coefs = dict(zip(out.column("id").to_pylist(), out.column("coef").to_pylist()))
    for rid, coef in clean.items():
        np.testing.assert_allclose(coefs[rid], coef, rtol=1e-6, atol=1e-7)
    tiny = _CountingFitter(replace(CONFIG, batch_pixels=pixels // 2))  # less than one image
    tiny(decoded)
    assert tiny.computations == [1] * 16
