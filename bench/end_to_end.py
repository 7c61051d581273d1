"""End-to-end model (Ray Train) against two-stage bank features + a linear model.

Usage::

    python bench/end_to_end.py [--patch-size 32] [--epochs 10] [--json FILE]

Data: the built-in textures (``kernelbank.datasets.load_textures``), train/test split
by position in each photograph, the same split for every method.

two-stage (fit kernels by least squares, then a classifier; single process)
    ``bank_iso_r2``   per-class pooled kernels, isotropic radius 2, dilations 1,2,4
                      (the end-to-end model's own geometry) → log residual features
    ``bank_full_r4``  per-class pooled kernels, full 9x9 basis, dilations 1,2,3
    ``ar_iso_r4``     AR coefficients, isotropic radius 4, dilations 1-3 (fits 32 px)
    each → StandardScaler + LogisticRegression (a linear model, C=1).
end-to-end (Ray Train, ``resources_per_worker={"CPU": 0.5}``, 2-CPU local Ray)
    ``e2e_gabor_w1`` / ``e2e_gabor_w2``: the defaults of ``kernelbank train`` (Gabor
    init, isotropic radius 2, dilations 1,2,4, 8 kernels each, batch norm, MLP 64,
    cosine schedule), 1 and 2 workers
    ``e2e_random_w2``: random init, 2 workers
    ``e2e_bank_w2``: initialised from the pooled bank of ``bank_iso_r2``, 2 workers
    the epoch is chosen on a validation split carved from train (20 % of each class,
    stratified, seeded: what ``kernelbank train`` exports), and its test accuracy is
    measured once; the two-stage models see no validation choice (fixed C=1). Training
    throughput: the median over epochs 1.. of (train images / slowest worker's epoch
    time); epoch 0 is left out because it includes the data pipeline's start-up.

Ratios are against the best two-stage accuracy and the 1-worker throughput, both
measured in this run. The machine is shared: read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernelbank.datasets import load_textures  # noqa: E402


def two_stage(train_x, train_y, test_x, test_y) -> dict[str, dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from kernelbank.sklearn import ARFeatures, BankFeatures

    extractors = {
        "bank_iso_r2": BankFeatures(radius=2, basis="isotropic", dilations=(1, 2, 4)),
        "bank_full_r4": BankFeatures(radius=4, basis="full", dilations=(1, 2, 3)),
        "ar_iso_r4": ARFeatures(radius=4, basis="isotropic", dilations=(1, 2, 3)),
    }
    out = {}
    for name, extractor in extractors.items():
        began = time.perf_counter()
        model = make_pipeline(extractor, StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        model.fit(train_x, train_y)
        accuracy = float(np.mean(model.predict(test_x) == test_y))
        out[name] = {"test_accuracy": accuracy, "seconds": time.perf_counter() - began,
                     "n_features": int(model[-1].coef_.shape[1])}
        if name == "bank_iso_r2":
            out[name]["bank"] = model[0].bank_
        print(f"# {name}: test accuracy {accuracy:.3f}", file=sys.stderr)
    return out


def end_to_end(name: str, workers: int, epochs: int, patch_size: int, folder: str,
               init: str, init_bank: str | None = None) -> dict:
    from kernelbank.stages.train import TrainConfig, fit_end_to_end, load_train_test
    config = TrainConfig(output=f"{folder}/{name}", workers=workers, epochs=epochs,
                         patch_size=patch_size, init=init, init_bank=init_bank, random_state=0)
    datasets, class_names, validation, skipped = load_train_test(config)
    began = time.perf_counter()
    summary = fit_end_to_end(datasets, class_names, config, validation=validation,
                             skipped=skipped)
    wall = time.perf_counter() - began
    later = [h["images_per_s"] for h in summary["epochs"][1:]] or \
        [summary["epochs"][0]["images_per_s"]]
    result = {"test_accuracy": summary["test_accuracy"], "best_epoch": summary["best_epoch"],
              "validation_accuracy": summary["validation_accuracy"],
              "final_validation_accuracy": summary["epochs"][-1]["validation_accuracy"],
              "final_train_accuracy": summary["epochs"][-1]["train_accuracy"],
              "images_per_s": statistics.median(later), "fit_seconds": wall,
              "n_parameters": summary["n_parameters"]}
    print(f"# {name}: epoch {result['best_epoch']} by validation "
          f"{result['validation_accuracy']:.3f}; test accuracy {result['test_accuracy']:.3f}, "
          f"{result['images_per_s']:.0f} images/s", file=sys.stderr)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    images, labels, splits = load_textures(patch_size=args.patch_size)
    train_x, train_y = images[splits == "train"].astype(np.float32), labels[splits == "train"]
    test_x, test_y = images[splits == "test"].astype(np.float32), labels[splits == "test"]
    print(f"# textures {args.patch_size}px: {len(train_y)} train, {len(test_y)} test, "
          f"{len(set(labels))} classes (chance {1 / len(set(labels)):.3f})", file=sys.stderr)

    results = two_stage(train_x, train_y, test_x, test_y)
    bank = results["bank_iso_r2"].pop("bank")

    import ray
    from kernelbank.io.bank_file import save_bank
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as folder:
        bank_url = f"{folder}/pooled_iso_r2.npz"
        save_bank(bank, bank_url)
        for name, workers, init in (("e2e_gabor_w1", 1, "gabor"), ("e2e_gabor_w2", 2, "gabor"),
                                    ("e2e_random_w2", 2, "random"), ("e2e_bank_w2", 2, "bank")):
            results[name] = end_to_end(name, workers, args.epochs, args.patch_size, folder, init,
                                       bank_url if init == "bank" else None)
    ray.shutdown()

    best_two = max((k for k in results if not k.startswith("e2e")),
                   key=lambda k: results[k]["test_accuracy"])
    base_acc = results[best_two]["test_accuracy"]
    base_speed = results["e2e_gabor_w1"]["images_per_s"]
    print(f"\nbest two-stage: {best_two} ({base_acc:.3f}); epochs={args.epochs}, "
          f"patch {args.patch_size}px")
    print(f"{'method':<16}{'test acc':>9}{'vs best 2-stage':>17}{'train img/s':>13}{'vs 1 worker':>13}")
    for name, r in results.items():
        speed = r.get("images_per_s")
        print(f"{name:<16}{r['test_accuracy']:>9.3f}{r['test_accuracy'] / base_acc:>17.3f}"
              + (f"{speed:>13.0f}{speed / base_speed:>13.2f}" if speed else f"{'':>13}{'':>13}"))
    if args.json:
        Path(args.json).write_text(json.dumps({"best_two_stage": best_two, "epochs": args.epochs,
                                               "patch_size": args.patch_size,
                                               "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
