"""The feature stage's descriptor groups on a real fit-stage table (no Ray run needed).

The rows come from the fit stage's own row builder (:class:`StatisticsFitter`, what each
actor runs); the features from :class:`TableFeaturizer`, what each feature task runs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

import kernelbank as kb
from kernelbank.config import FeatureConfig, FitConfig
from kernelbank.stages.features import TableFeaturizer
from kernelbank.stages.fit import StatisticsFitter, fit_metadata
from kernelbank.stages.table import TableMeta

IMAGES = list(np.random.default_rng(0).integers(0, 256, size=(3, 24, 26), dtype=np.uint8))


def _features(fit: FitConfig, features: FeatureConfig, images=IMAGES
              ) -> tuple[np.ndarray, list[str]]:
    row, _ = StatisticsFitter(fit)._statistics(list(images), ["a", "b", "c"])
    table = pa.table({"id": ["a", "b", "c"], "path": ["a", "b", "c"], "label": ["x", "y", "x"],
                      "split": ["train"] * 3,
                      **{k: pa.array(list(row[k])) for k in ("coef", "mse", "sums",
                                                               "descriptors")}})
    out = TableFeaturizer(None, {}, TableMeta.from_json(fit_metadata(fit, 2)), features)(table)
    names = out.column_names[4:-3]
    return np.column_stack([out.column(n).to_numpy() for n in names]), names


def test_default_features_hold_the_image_patterns_hellinger_mapped():
    fit = FitConfig(radius=1, dilations=(1, 2))
    values, names = _features(fit, FeatureConfig(groups=("own", "residual", "image")))
    image = [n for n in names if n.startswith("img_")]
    assert image == [f"img_s1_d{d}_lbp_ri_lag1_{b:02d}" for d in (1, 2) for b in range(10)]
    assert not [n for n in names if "nri" in n or "cooc" in n]      # rotation-invariant only
    stats = kb.image_statistics(np.stack(IMAGES), kb.Basis.full(1), dilations=(1, 2),
                                descriptors=fit.descriptor_spec(2))
    stored = stats.descriptor_names.index("img_lbp_ri_lag1_00")
    for e, d in enumerate((1, 2)):
        got = values[:, names.index(f"img_s1_d{d}_lbp_ri_lag1_00"):][:, :10]
        expected = np.sqrt(stats.descriptors[:, e, stored:stored + 10].numpy())
        np.testing.assert_allclose(got, expected, atol=1e-6)      # float32 features
        skew = stats.descriptor_names.index("skew")                # not a histogram: as stored
        np.testing.assert_allclose(values[:, names.index(f"res_s1_d{d}_skew")],
                                   stats.descriptors[:, e, skew].numpy(), rtol=1e-6)


def test_a_table_without_image_patterns_gives_the_same_residual_features():
    """An old table (no ``img_`` descriptors) with the ``image`` group: no image columns,
    and the residual columns are the same values as from a new table."""
    config = FeatureConfig(groups=("residual", "image"), power=1.0, rotation_invariant=False)
    new, new_names = _features(FitConfig(radius=1, dilations=(1, 2)), config)
    old, old_names = _features(FitConfig(radius=1, dilations=(1, 2), image_patterns=False),
                               config)
    assert old_names == [n for n in new_names if not n.startswith("img_")]
    assert any("lbp_nri" in n for n in old_names) and len(old_names) < len(new_names)
    np.testing.assert_array_equal(old, new[:, [new_names.index(n) for n in old_names]])


def test_symmetry_pooled_own_kernels_are_invariant_to_quarter_turns_and_flips():
    """The own kernel of a rotated (flipped) image is the rotated (flipped) kernel, so its
    orbit means are the same; the raw coefficients are not."""
    fit, square = FitConfig(radius=2, dilations=(1,)), [i[:24, :24] for i in IMAGES]
    config = FeatureConfig(groups=("own",), own_kernel="symmetric")
    pooled, names = _features(fit, config, square)
    assert names == [f"ar_s1_d1_sym{k}" for k in range(5)] + ["ar_s1_d1_log_mse"]
    for moved in ([np.rot90(i).copy() for i in square], [i[:, ::-1].copy() for i in square]):
        np.testing.assert_allclose(_features(fit, config, moved)[0], pooled, rtol=1e-4,
                                   atol=1e-6)          # float32 features
        raw = [_features(fit, FeatureConfig(groups=("own",), own_kernel="coefficients"), x)[0]
               for x in (square, moved)]
        assert np.abs(raw[0] - raw[1]).max() > 1e-2
    # the orbit means of the raw coefficients (each orbit holds 4 or 8 taps)
    raw, raw_names = _features(fit, FeatureConfig(groups=("own",), own_kernel="coefficients"),
                               square)
    np.testing.assert_allclose(pooled[:, 0], raw[:, [raw_names.index(f"ar_s1_d1_c{j:02d}")
                                                     for j in (7, 11, 12, 16)]].mean(1),
                               rtol=1e-5, atol=1e-6)


def test_the_default_own_features_are_the_kernels_spectra_invariant_to_turns_and_flips():
    """By default a grey table gives each own kernel as its spectral descriptors
    (:mod:`kernelbank.core.spectrum`), computed from the stored coefficients: the same for
    a quarter-turned or flipped image, which the coefficients are not."""
    from kernelbank.core.spectrum import spectral_invariants, spectrum_operator
    fit, square = FitConfig(radius=2, dilations=(1, 2)), [i[:24, :24] for i in IMAGES]
    spectra, names = _features(fit, FeatureConfig(groups=("own",)), square)
    assert names[:2] == ["ar_s1_d1_spec_r0_h0", "ar_s1_d1_spec_r0_h2"] and len(names) == 50
    raw, raw_names = _features(fit, FeatureConfig(groups=("own",), own_kernel="coefficients"),
                               square)
    operator = spectrum_operator(kb.Basis.full(2).kernels.numpy())
    for d in (1, 2):
        coef = raw[:, [raw_names.index(f"ar_s1_d{d}_c{j:02d}") for j in range(24)]]
        got = spectra[:, [names.index(n) for n in names if n.startswith(f"ar_s1_d{d}_spec")]]
        np.testing.assert_allclose(got, spectral_invariants(coef, operator), rtol=1e-4,
                                   atol=1e-5)
    for moved in ([np.rot90(i).copy() for i in square], [i.T.copy() for i in square]):
        np.testing.assert_allclose(_features(fit, FeatureConfig(groups=("own",)), moved)[0],
                                   spectra, rtol=1e-4, atol=1e-5)


def test_own_kernel_forms_a_table_cannot_give_fail_naming_the_option():
    fit = FitConfig(radius=1, dilations=(1,), basis="isotropic")
    with pytest.raises(ValueError, match="own_kernel='symmetric' needs .* full basis"):
        _features(fit, FeatureConfig(groups=("own",), own_kernel="symmetric"))
    values, names = _features(fit, FeatureConfig(groups=("own",), own_kernel="spectrum"))
    assert names[0] == "ar_s1_d1_spec_r0_h0" and np.isfinite(values).all()
    with pytest.raises(ValueError, match="own_kernel must be one of"):
        FeatureConfig(own_kernel="rotated")


def test_a_feature_task_computes_its_file_in_slices_with_the_same_rows(tmp_path, monkeypatch):
    """A feature task computes a statistics file one row group and at most
    :data:`SLICE_ROWS` rows at a time (its memory then does not grow with the file); the
    rows it writes are the same."""
    import fsspec
    import pyarrow.parquet as pq

    from kernelbank.io.tables import PartWriter
    from kernelbank.stages import features

    fit = FitConfig(radius=1, dilations=(1, 2))
    images = list(np.random.default_rng(1).integers(0, 256, size=(7, 24, 26), dtype=np.uint8))
    row, _ = StatisticsFitter(fit)._statistics(images, [str(i) for i in range(7)])
    ids = [f"i{i}" for i in range(7)]
    table = pa.table({"id": ids, "path": ids, "label": list("xyxyxyx"), "split": ["train"] * 7,
                      **{k: pa.array(list(row[k])) for k in ("coef", "mse", "sums",
                                                               "descriptors")}})
    path = str(tmp_path / "fit-0.parquet")
    pq.write_table(table, path, row_group_size=4)            # row groups of 4 and 3 rows
    fs = fsspec.filesystem("file")
    args = (None, {}, TableMeta.from_json(fit_metadata(fit, 2)),
            FeatureConfig(groups=("own", "residual", "image")))
    written = {}
    for rows in (2, 1024):
        monkeypatch.setattr(features, "SLICE_ROWS", rows)
        writer = PartWriter(fs, str(tmp_path / f"out{rows}"), str(tmp_path / f"err{rows}"),
                            "features")
        result = features._features_of_file(f"slices-{rows}", args, fs, path, writer,
                                            ("folds", 5))
        assert result["rows"] == 7 and len(result["head_input"]) == 5
        written[rows] = pq.read_table(str(tmp_path / f"out{rows}"))
    assert written[2].num_rows == 7 and written[2].equals(written[1024])
