"""The sections of the report page, each from :class:`~kernelbank.report.collect.RunData`.

Each ``*_section(data, images)`` returns the section's HTML (empty when the run has
nothing for it) and adds the PNGs it references to ``images`` (file name → bytes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import figures
from .collect import RunData
from .html import figure, number, table, text
from .maps import bank_maps

__all__ = ["overview_section", "dataset_section", "bank_section", "samples_section",
           "results_section", "performance_section", "training_section", "precision_recall"]

STAGES = ("fit", "reduce", "features", "classify")
#: Banks with at most this many kernels colour the winner map per kernel, else per class.
MAX_KERNEL_CATEGORIES = 20
#: Longest per-class or per-kernel table drawn.
MAX_TABLE_ROWS = 60
#: Banks with at most this many kernels per class are drawn as one figure.
SMALL_CLASS_BANK = 2
#: Most classes drawn in the per-class counts figure.
MAX_FIGURE_CLASSES = 40
#: Half-width of the box over which the winner map compares squared residuals.
WINNER_SMOOTH = 2


def _more(total: int) -> str:
    """A note when a table was cut at :data:`MAX_TABLE_ROWS` rows."""
    if total <= MAX_TABLE_ROWS:
        return ""
    return f'<p class="note">{total - MAX_TABLE_ROWS} more rows not shown.</p>'


def _stages(data: RunData) -> dict[str, Any]:
    return (data.summary or {}).get("stages", {})


def overview_section(data: RunData, images: dict[str, bytes]) -> str:
    s = data.summary
    if not s:
        return ""
    cards = [("images fitted", "images", 0, False), ("records read", "records", 0, False),
             ("error rows", "errors", 0, False), ("test accuracy", "test_accuracy", 3, True),
             ("run seconds", "seconds", 1, False)]
    body = '<div class="cards">' + "".join(
        f'<div class="card"><b>{number(s.get(k), k, digits=d, percent=p)}</b>{label}</div>'
        for label, k, d, p in cards if k in s) + "</div>"
    settings = s.get("settings", {})
    if settings:
        body += "<h3>Settings</h3>" + table(
            ["setting", "value"],
            [[text(k), number(v, f"settings.{k}")] for k, v in settings.items()])
    return body


def dataset_section(data: RunData, images: dict[str, bytes]) -> str:
    if data.summary is None and not data.n_errors and not data.shapes:
        return ""                                   # an end-to-end output alone
    body = ""
    fit = _stages(data).get("fit", {})
    counts = fit.get("counts", {})
    if counts:
        splits = sorted(counts)
        classes = sorted({c for part in counts.values() for c in part})
        rows = [[text(c)] + [number(counts[sp].get(c), f"stages.fit.counts.{sp}.{c}")
                             if c in counts[sp] else "0" for sp in splits]
                for c in classes[:MAX_TABLE_ROWS]]
        body += "<h3>Images per class and split</h3>" + table(
            ["class"] + [text(sp) for sp in splits], rows, numeric=range(1, len(splits) + 1),
            key="counts") + _more(len(classes))
        if len(classes) <= MAX_FIGURE_CLASSES:
            images["counts.png"] = figures.counts_figure(counts)
            body += figure("counts.png", "Fitted images per class, one bar per split.",
                           "images per class and split")
    if data.shapes:
        top = data.shapes.most_common(15)
        body += "<h3>Image sizes</h3>" + table(
            ["shape", "images"], [[text(" × ".join(map(str, s))), str(n)] for s, n in top],
            numeric=[1]) + (f"<p>{len(data.shapes)} distinct shapes; the 15 most common are "
                            f"shown.</p>" if len(data.shapes) > 15 else "")
    body += "<h3>Errors</h3>" + _errors_html(data)
    return body


def _errors_html(data: RunData) -> str:
    per_stage = {name: st.get("errors", {}) for name, st in _stages(data).items()
                 if isinstance(st, dict) and st.get("errors")}
    if not per_stage and not data.n_errors:
        return "<p>No record was rejected.</p>"
    rows = [[text(stage), text(kind), number(n, f"stages.{stage}.errors.{kind}")]
            for stage, kinds in per_stage.items() for kind, n in kinds.items()]
    body = table(["stage", "error kind", "records"], rows, numeric=[2], key="errors-per-stage")
    shown = len(data.errors)
    body += (f'<p class="err">{number(data.n_errors, "n_errors", "derived", 0)} rows in '
             f"<code>errors/</code>; {'all' if shown == data.n_errors else f'the first {shown}'}"
             " shown.</p>")
    body += table(["path", "label", "split", "stage", "reason"],
                  [[text(r.get("path")), text(r.get("label")), text(r.get("split")),
                    text(r.get("stage")), text(r.get("reason"))] for r in data.errors],
                  key="errors")
    return body


def _kernel_captions(bank, data: RunData) -> list[str]:
    """A short caption per kernel: role (pooled, mean, ±pc), dilation, explained variance."""
    captions, seen = [], {}
    for i, (c, d, method) in enumerate(zip(bank.class_index.tolist(), bank.dilations.tolist(),
                                           bank.kernel_methods)):
        position = seen.get((c, d), 0)
        seen[(c, d)] = position + 1
        if method == "pca":
            role = "mean" if position == 0 else \
                f"{'+' if position % 2 else '−'}pc{(position + 1) // 2}"
            ratio = None if data.variance_ratio is None else data.variance_ratio[i]
            if role != "mean" and ratio is not None and np.isfinite(ratio):
                role += f" {100 * ratio:.0f}%"
        elif method == "kmeans":
            role = f"centre {position + 1}"
        else:
            role = method
        captions.append(f"{role} · d{d}")
    return captions


def bank_section(data: RunData, images: dict[str, bytes], max_classes: int = 24) -> str:
    bank = data.bank
    if bank is None:
        return ""
    vmax = float(bank.kernels.abs().max())
    captions = _kernel_captions(bank, data)
    body = (f"<p>Method <b>{text(bank.method)}</b>, {len(bank)} kernels of radius {bank.radius} "
            f"at dilations {text(sorted(set(bank.dilations.tolist())))}. All kernels share one "
            f"colour scale (red positive, blue negative, limit ±{vmax:.3g}); the centre tap is "
            f"always 0. <i>d</i> is the dilation (tap spacing).</p>")
    if bank.channels > 1:
        body += (f"<p>Vector kernels of {bank.channels} channels: each kernel is a "
                 f"{bank.channels}×{bank.channels} grid, row <i>c</i> (out) the weights "
                 f"output channel <i>c</i> puts on each input channel (column, in); the "
                 f"centre of each channel's own input is 0.</p>")
    groups = [(c, bank.class_names[c]) for c in range(len(bank.class_names))]
    if (bank.class_index < 0).any():
        groups.append((-1, "class-free kernels"))
    kernels = bank.kernels.numpy()
    members = [(c, name, [i for i in range(len(bank)) if bank.class_index[i] == c])
               for c, name in groups]
    members = [m for m in members if m[2]]
    if bank.channels > 1:
        return body + _channel_banks(bank, members, captions, vmax, images, max_classes) + \
            _variance_table(bank, data, captions)
    if max(len(index) for _, _, index in members) <= SMALL_CLASS_BANK and \
            len(members) <= max_classes:
        # a few kernels per class (pooled banks): one figure, each kernel titled by class
        order = [i for _, _, index in members for i in index]
        per_row = max(len(index) for _, _, index in members)
        names = {c: name for c, name, _ in members}
        images["bank_000.png"] = figures.kernel_grid(
            [kernels[i] for i in order],
            [f"{names[int(bank.class_index[i])]}\n{captions[i]}" for i in order], vmax,
            ncols=per_row * max(1, 8 // per_row))
        return body + figure("bank_000.png", "The kernels of every class's bank, titled by "
                             "class, role and dilation.", "bank kernels of every class") + \
            _variance_table(bank, data, captions)
    for n, (c, name, index) in enumerate(members):
        if n >= max_classes:
            body += f'<p class="note">Banks of {len(members) - n} more classes not drawn.</p>'
            break
        file = f"bank_{n:03d}.png"
        per_dilation = max(int((bank.dilations[index] == d).sum())
                           for d in set(bank.dilations[index].tolist()))
        images[file] = figures.kernel_grid([kernels[i] for i in index],
                                           [captions[i] for i in index], vmax,
                                           ncols=max(per_dilation, 2) if per_dilation <= 10 else 8)
        body += f"<h3>{text(name)}</h3>" + figure(
            file, f"{len(index)} kernels of {text(name)}.", f"bank kernels of {name}")
    return body + _variance_table(bank, data, captions)


def _channel_banks(bank, members, captions: list[str], vmax: float,
                   images: dict[str, bytes], max_classes: int) -> str:
    """One figure per class of vector kernels, each a channel × channel grid."""
    body = ""
    kernels = bank.kernels.numpy()
    for n, (c, name, index) in enumerate(members):
        if n >= max_classes:
            body += f'<p class="note">Banks of {len(members) - n} more classes not drawn.</p>'
            break
        file = f"bank_{n:03d}.png"
        images[file] = figures.channel_kernel_grid([kernels[i] for i in index],
                                                   [captions[i] for i in index], vmax)
        body += f"<h3>{text(name)}</h3>" + figure(
            file, f"{len(index)} vector kernels of {text(name)} (rows: output channel, "
            "columns: input channel).", f"bank kernels of {name}")
    return body


def _variance_table(bank, data: RunData, captions: list[str]) -> str:
    """PCA banks: each direction's variance and its share of the class's total."""
    body = ""
    if bank.explained_variance is not None:
        rows = []
        names = bank.kernel_names
        for i in range(len(bank)):
            ev = float(bank.explained_variance[i])
            if not np.isfinite(ev) or captions[i].startswith("−"):
                continue
            ratio = None if data.variance_ratio is None else float(data.variance_ratio[i])
            rows.append([text(names[i]), text(captions[i].split(" ")[0]),
                         number(ev, f"explained_variance.{names[i]}", "derived", 6),
                         number(ratio, f"variance_share.{names[i]}", "derived", 3,
                                percent=True)])
        body += ("<h3>PCA explained variance</h3><p>Variance of the class's AR coefficients "
                 "along each principal direction, and its share of the class's total "
                 "coefficient variance at that dilation (kernels are mean ± one standard "
                 "deviation along the direction).</p>" +
                 table(["kernel", "direction", "variance", "share"], rows[:MAX_TABLE_ROWS],
                       numeric=[2, 3], key="explained-variance") + _more(len(rows)))
    return body


def _categories(bank, winner: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Winner map as categories: kernels for small banks, their classes for large ones."""
    if len(bank) <= MAX_KERNEL_CATEGORIES:
        return winner, list(bank.kernel_names)
    owners = bank.class_index.numpy()
    names = list(bank.class_names)
    if (owners < 0).any():
        owners = np.where(owners < 0, len(names), owners)
        names.append("class-free")
    return np.where(winner >= 0, owners[np.clip(winner, 0, None)], -1), names


def samples_section(data: RunData, images: dict[str, bytes]) -> str:
    bank = data.bank
    if bank is None or not data.samples:
        return ""
    if bank.channels > 1:
        return ('<p class="note">Residual and winner maps are drawn for one-channel banks '
                f"only; this bank models {bank.channels} channels.</p>")
    per = "kernel" if len(bank) <= MAX_KERNEL_CATEGORIES else "class of the kernel"
    box = 2 * WINNER_SMOOTH + 1
    body = (f"<p>For a few test images per class: the image, the residual "
            f"<i>e = x − g (k ⋆ x)</i> of the bank kernel with the smallest mean squared "
            f"residual, and, at each pixel, the {per} with the smallest mean <i>e</i>² over the "
            f"{box}×{box} box around it (white: the border the largest dilated window cannot "
            f"reach).</p>")
    names = bank.kernel_names
    for n, sample in enumerate(data.samples):
        title = f"{sample['label']} ({sample['split']}): {sample['path'].rsplit('/', 1)[-1]}"
        if "image" not in sample:
            body += f'<p class="err">{text(title)}: {text(sample.get("problem"))}</p>'
            continue
        try:
            maps = bank_maps(sample["image"], bank, smooth=WINNER_SMOOTH)
        except ValueError as error:
            body += f'<p class="err">{text(title)}: {text(error)}</p>'
            continue
        categories, labels = _categories(bank, maps.winner)
        file = f"sample_{n:03d}.png"
        images[file] = figures.sample_panel(
            maps.image, maps.residual, categories, labels, title,
            "kernel" if len(bank) <= MAX_KERNEL_CATEGORIES else "class of kernel")
        body += figure(file, f"{text(sample['path'])} — best kernel "
                             f"<code>{text(names[maps.best])}</code>, residual MSE "
                             f"{maps.mse[maps.best]:.4f}", f"maps of {title}")
    return body


def precision_recall(matrix: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from confusion counts (rows true).

    The definitions of ``sklearn.metrics.precision_recall_fscore_support`` with
    ``zero_division=0``: precision ``C_cc / Σ_r C_rc``, recall ``C_cc / Σ_k C_ck``.
    """
    matrix = np.asarray(matrix, dtype=np.float64).reshape(len(labels), len(labels))
    hits, predicted, actual = np.diag(matrix), matrix.sum(0), matrix.sum(1)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)  # noqa: E731
    precision, recall = ratio(hits, predicted), ratio(hits, actual)
    f1 = ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1,
            "support": actual.astype(np.int64)}


def results_section(data: RunData, images: dict[str, bytes]) -> str:
    classify = _stages(data).get("classify")
    body = ""
    methods = []
    if classify:
        train = classify.get("splits", {}).get("train", {})
        methods += [("ridge classifier on bank features", "summary",
                     ("stages.classify.test_accuracy", classify.get("test_accuracy")),
                     ("stages.classify.train_accuracy", classify.get("train_accuracy"))),
                    ("likelihood (per-class AR models)", "summary",
                     ("stages.classify.likelihood_test_accuracy",
                      classify.get("likelihood_test_accuracy")),
                     ("stages.classify.splits.train.likelihood_accuracy",
                      train.get("likelihood_accuracy")))]
    if data.train_summary:
        methods.append(("end-to-end model (best epoch)", "train",
                        ("test_accuracy", data.train_summary.get("test_accuracy")), None))
    if not methods:
        return ""
    body += "<h3>Accuracy per method</h3>" + table(
        ["method", "test accuracy", "train accuracy"],
        [[text(m), number(test[1], test[0], src, digits=4),
          number(fit[1], fit[0], src, digits=4) if fit and fit[1] is not None else "n/a"]
         for m, src, test, fit in methods], numeric=[1, 2], key="accuracy")
    splits = (classify or {}).get("splits", {})
    split = "test" if "test" in splits else next(iter(sorted(splits)), None)
    if split is None:
        return body
    part = splits[split]
    labels, matrix = part["labels"], np.asarray(part["confusion"])
    images["confusion.png"] = figures.confusion_figure(
        matrix, labels, f"ridge classifier, {split} split")
    body += f"<h3>Confusion matrix ({text(split)} split)</h3>" + figure(
        "confusion.png", "Rows: true class; columns: predicted class; colour: fraction of the "
                         "true class.", "confusion matrix")
    if len(labels) <= 30:
        key = f"stages.classify.splits.{split}.confusion"
        body += table(["true \\ predicted"] + [text(c) for c in labels],
                      [[text(c)] + [number(int(v), f"{key}.{i}.{j}") for j, v in enumerate(row)]
                       for i, (c, row) in enumerate(zip(labels, matrix.tolist()))],
                      numeric=range(1, len(labels) + 1), key="confusion")
    scores = precision_recall(matrix, labels)
    body += "<h3>Per-class precision and recall</h3>" + table(
        ["class", "precision", "recall", "F1", "support"],
        [[text(c)] + [number(float(scores[m][i]), f"{m}.{c}", "derived", 3)
                      for m in ("precision", "recall", "f1")] +
         [number(int(scores["support"][i]), f"support.{c}", "derived")]
         for i, c in enumerate(labels[:MAX_TABLE_ROWS])], numeric=[1, 2, 3, 4],
        key="precision-recall") + _more(len(labels))
    body += ("<p>From the confusion counts in <code>summary.json</code> (the pipeline stores "
             "counts, not per-image predictions).</p>")
    return body


def performance_section(data: RunData, images: dict[str, bytes]) -> str:
    stages = _stages(data)
    names = [s for s in STAGES if s in stages] + [s for s in stages if s not in STAGES]
    if not names:
        return ""
    rows = []
    for s in names:
        st = stages[s]
        errors = sum((st.get("errors") or {}).values()) if isinstance(st.get("errors"), dict) \
            else 0
        rows.append([text(s), number(st.get("seconds"), f"stages.{s}.seconds", digits=2),
                     number(st.get("images"), f"stages.{s}.images") if "images" in st else "",
                     number(st.get("images_per_second"), f"stages.{s}.images_per_second",
                            digits=1),
                     str(errors)])
    body = table(["stage", "seconds", "images", "images/s", "errors"], rows,
                 numeric=[1, 2, 3, 4], key="stages")
    images["stages.png"] = figures.stages_figure(
        names, [stages[s].get("seconds") or 0 for s in names],
        [stages[s].get("images_per_second") for s in names])
    body += figure("stages.png", "Wall time and throughput per stage.", "stage timings")
    ray = (data.summary or {}).get("ray")
    if ray:
        res = ray.get("resources", {})
        body += (f"<p>Ray ({text(ray.get('mode'))}): {res.get('CPU', 0):g} CPUs, "
                 f"{res.get('GPU', 0):g} GPUs; start-up "
                 f"{number(ray.get('seconds'), 'ray.seconds', digits=1)} s.</p>")
    return body


def training_section(data: RunData, images: dict[str, bytes]) -> str:
    t = data.train_summary
    if not t:
        return ""
    epochs = t.get("epochs") or []
    body = (f"<p>Epoch {number(t.get('best_epoch'), 'best_epoch', 'train')} chosen by "
            f"validation accuracy "
            f"{number(t.get('validation_accuracy'), 'validation_accuracy', 'train', 4)}; "
            f"test accuracy {number(t.get('test_accuracy'), 'test_accuracy', 'train', 4)}; "
            f"{number(t.get('images_per_s'), 'images_per_s', 'train', 1)} training images/s; "
            f"model <code>{text(t.get('checkpoint'))}</code>.</p>")
    if epochs:
        images["learning_curves.png"] = figures.curves_figure(epochs)
        body += figure("learning_curves.png", "Training loss and accuracy per epoch.",
                       "learning curves")
        keys = ("loss", "train_accuracy", "validation_accuracy", "images_per_s")
        body += table(["epoch"] + list(keys),
                      [[str(e.get("epoch"))] + [number(e.get(k), f"epochs.{i}.{k}", "train", 4)
                                                for k in keys] for i, e in enumerate(epochs)],
                      numeric=range(1, 5), key="epochs")
    if data.learned:
        kernels, dilations = data.learned["kernels"], data.learned["dilations"]
        flat = [kernels[i, j] for i in range(kernels.shape[0]) for j in range(kernels.shape[1])]
        titles = [f"k{j} · d{d}" for d in dilations for j in range(kernels.shape[1])]
        images["learned_kernels.png"] = figures.kernel_grid(
            flat, titles, float(np.abs(kernels).max()), ncols=kernels.shape[1])
        body += "<h3>Learned kernels</h3>" + figure(
            "learned_kernels.png", "Kernels of the exported end-to-end model, one row per "
                                   "dilation, on one shared colour scale.", "learned kernels")
    return body
