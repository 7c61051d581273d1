"""The per-worker loop of the train stage (runs inside Ray Train's workers).

:func:`train_loop_per_worker` is what ``TorchTrainer`` runs on every worker: it builds
the model (identical on every rank), restores the latest checkpoint when there is one
(model, optimizer, epoch counter, history, best weights), then per epoch trains on its
shard of the train split under DDP, averages batch-norm statistics over the workers,
scores its shard of the validation split, and reports the summed metrics with a
checkpoint (rank 0). The best weights are those of the epoch with the best validation
accuracy (the earliest on a tie). After the last epoch every worker loads them and
scores its shard of the test split, once: the last report (``final: True``) carries that
accuracy, which no choice depends on. Its configuration is a plain dict built by
:func:`kernelbank.stages.train.fit_end_to_end`.

A checkpoint is two files, neither of which can run code when it is read:
``state.pt`` holds only tensors (model, optimizer state, best weights) and is read with
``torch.load(weights_only=True)``; ``state.json`` holds the epoch counter, the history,
the best epoch's accuracy and the model configuration.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time

import numpy as np

__all__ = ["STATE_FILE", "STATE_JSON", "train_loop_per_worker", "save_checkpoint",
           "load_checkpoint"]

STATE_FILE = "state.pt"
STATE_JSON = "state.json"


def save_checkpoint(folder: str, *, model_state: dict, optimizer_state: dict, epoch: int,
                    history: list, best: dict, model_config: dict,
                    test: dict | None = None) -> None:
    """Write a checkpoint into ``folder``: tensors in ``state.pt``, the rest in ``state.json``.

    ``best`` is ``{"validation_accuracy", "epoch", "state"}`` with ``state`` a state dict
    (or None). ``test`` (the last checkpoint of a finished run only) is the one scoring
    of the test split with the best weights: ``{"test_accuracy", "test_images"}``.
    """
    import torch
    torch.save({"model": model_state, "optimizer": optimizer_state, "best_state": best["state"]},
               os.path.join(folder, STATE_FILE))
    with open(os.path.join(folder, STATE_JSON), "w") as handle:
        json.dump({"epoch": epoch, "history": history, "model_config": model_config,
                   "best": {k: v for k, v in best.items() if k != "state"}, "test": test},
                  handle)


def load_checkpoint(folder: str) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles).

    Returns ``model``, ``optimizer`` (state dicts), ``epoch``, ``history``,
    ``model_config``, ``best`` (with its ``state``) and ``test`` (None until the run
    has finished).

    Raises
    ------
    pickle.UnpicklingError
        When ``state.pt`` holds anything but tensors and plain containers.
    """
    import torch
    tensors = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu",
                         weights_only=True)
    with open(os.path.join(folder, STATE_JSON)) as handle:
        meta = json.load(handle)
    return {"model": tensors["model"], "optimizer": tensors["optimizer"],
            "epoch": int(meta["epoch"]), "history": meta["history"],
            "model_config": meta["model_config"], "test": meta.get("test"),
            "best": {**meta["best"], "state": tensors["best_state"]}}


def _initial_model(loop: dict):
    """The model every worker starts from (identical on all ranks: seeded, or loaded)."""
    import torch
    from ..nn import EndToEndClassifier, ModelConfig
    model = EndToEndClassifier(ModelConfig.from_dict(loop["model"]))
    torch.manual_seed(loop["random_state"])
    model.init_random(random_state=loop["random_state"])
    if loop.get("init_kernels") is not None:
        model.init_from_kernels(torch.as_tensor(np.asarray(loop["init_kernels"])),
                                loop["init_dilations"])
    return model


def _shape_groups(images: list[np.ndarray], labels: np.ndarray):
    """Split a batch into runs of equal image size (stacked), in first-seen order."""
    shapes = [im.shape for im in images]
    for shape in dict.fromkeys(shapes):
        keep = [i for i, s in enumerate(shapes) if s == shape]
        yield np.stack([images[i] for i in keep]), labels[keep]


def _batches(iterator, loop: dict, device, seed: int | None, errors: list | None = None):
    """Tensors ``(images (n, *spatial) float32, labels (n,) int64)`` from decoded rows.

    Error rows (no pixels) and rows of unknown labels are skipped; with ``errors`` given,
    the path of each unknown-label row is appended to it (the driver counts the error
    rows: :func:`kernelbank.stages.train.load_train_test`).
    """
    import torch
    from ..io.readers import images_from_batch
    index = {name: i for i, name in enumerate(loop["model"]["class_names"])}
    kwargs = {"local_shuffle_buffer_size": max(loop["shuffle_buffer"], 4 * loop["batch_size"]),
              "local_shuffle_seed": seed} if seed is not None else {}
    for batch in iterator.iter_batches(batch_size=loop["batch_size"], batch_format="numpy",
                                       **kwargs):
        images = images_from_batch(batch)
        keep = [i for i, im in enumerate(images)
                if im is not None and str(batch["label"][i]) in index]
        if errors is not None:          # undecodable rows are counted by the driver
            errors.extend({"path": str(batch["path"][i]),
                           "reason": f"unknown label {batch['label'][i]!r}"}
                          for i in range(len(images)) if i not in keep and images[i] is not None)
        if not keep:
            continue
        labels = np.array([index[str(batch["label"][i])] for i in keep], dtype=np.int64)
        for stacked, y in _shape_groups([images[i] for i in keep], labels):
            yield torch.as_tensor(stacked, device=device), torch.as_tensor(y, device=device)


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch
    import torch.distributed as dist
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _gather(items: list) -> list:
    """The concatenation of ``items`` from every rank (rank order)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return list(items)
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


def _average_buffers(model) -> None:
    """Average the batch-norm running statistics over the workers.

    DDP keeps parameters equal on every rank, but each rank updates its running
    statistics from its own batches; without this, rank 1 would score the test set with
    other statistics than the model rank 0 checkpoints and exports.
    """
    import torch
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for norm in norms:
            for buffer in (norm.running_mean, norm.running_var):
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer /= dist.get_world_size()


def _evaluate(model, iterator, loop: dict, device, errors: list | None) -> tuple[int, int]:
    import torch
    correct = total = 0
    model.eval()
    with torch.no_grad():
        for images, y in _batches(iterator, loop, device, seed=None, errors=errors):
            correct += int((model(images).argmax(1) == y).sum())
            total += len(y)
    return correct, total


def _learning_rate(loop: dict, epoch: int) -> float:
    if loop["schedule"] == "constant":
        return loop["lr"]
    return loop["lr"] * 0.5 * (1 + math.cos(math.pi * epoch / loop["epochs"]))


def train_loop_per_worker(loop: dict) -> None:
    """The per-worker loop ``TorchTrainer`` runs (``loop``: plain dict, see ``fit_end_to_end``)."""
    import torch
    import ray.train
    import ray.train.torch as rtt

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(loop["threads"])))
    device = rtt.get_device()
    raw = _initial_model(loop)
    optimizer = torch.optim.Adam(raw.parameters(), lr=loop["lr"], weight_decay=loop["weight_decay"])
    start, history, best = 0, [], {"validation_accuracy": -1.0, "epoch": -1, "state": None}

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(folder)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history, best = state["epoch"] + 1, state["history"], state["best"]
    model = rtt.prepare_model(raw)
    train_shard = ray.train.get_dataset_shard("train")
    validation_shard = ray.train.get_dataset_shard("validation")
    test_shard = ray.train.get_dataset_shard("test")

    for epoch in range(start, loop["epochs"]):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(loop, epoch)
        model.train()
        began = time.perf_counter()
        loss_sum = correct = count = 0.0
        errors = [] if epoch == start else None          # bad rows are the same every epoch
        seed = loop["random_state"] + 1000 * epoch + rank
        # error rows, mixed image sizes and skipped 1-image batches give the ranks uneven
        # step counts; DDP's join() keeps the gradient all-reduces matched until all finish
        with model.join() if hasattr(model, "join") else contextlib.nullcontext():
            for images, y in _batches(train_shard, loop, device, seed=seed, errors=errors):
                if len(y) < 2:              # batch norm cannot train on one image
                    continue
                logits = model(images)
                loss = torch.nn.functional.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(y)
                correct += float((logits.argmax(1) == y).sum())
                count += len(y)
        elapsed = time.perf_counter() - began
        loss_sum, correct, count = _all_reduce([loss_sum, correct, count])
        (elapsed,) = _all_reduce([elapsed], op="max")
        _average_buffers(raw)
        val_correct, val_total = _evaluate(raw, validation_shard, loop, device, errors)
        val_correct, val_total, n_errors = _all_reduce(
            [val_correct, val_total, len(errors) if errors is not None else -1])
        steps = max((int(s["step"]) for s in optimizer.state_dict()["state"].values()), default=0)
        metrics = {"epoch": epoch, "loss": loss_sum / max(count, 1),
                   "train_accuracy": correct / max(count, 1),
                   "validation_accuracy": val_correct / max(val_total, 1),
                   "train_images": int(count), "validation_images": int(val_total),
                   "images_per_s": count / max(elapsed, 1e-9), "epoch_seconds": elapsed,
                   "optimizer_steps": steps, "workers": world, "run_start_epoch": start,
                   "lr": optimizer.param_groups[0]["lr"]}
        if errors is not None:          # the driver's undecodable rows, the workers' unknown labels
            metrics["skipped_rows"] = loop["skipped"]["rows"] + int(n_errors)
            metrics["skipped_examples"] = (loop["skipped"]["examples"]
                                           + _gather(errors[:5]))[:5]
        history.append(metrics)
        if metrics["validation_accuracy"] > best["validation_accuracy"]:
            best = {"validation_accuracy": metrics["validation_accuracy"], "epoch": epoch,
                    "state": {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}}
        if rank == 0:
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(folder, model_state=raw.state_dict(),
                                optimizer_state=optimizer.state_dict(), epoch=epoch,
                                history=history, best=best, model_config=loop["model"])
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)
        if loop.get("fail_after_epoch") == epoch:
            raise RuntimeError(f"fault drill: stopping after the checkpoint of epoch {epoch}")

    # the test split, once, with the exported (validation-selected) weights; the result
    # travels in a last checkpoint, which is what the driver reads back
    last = {k: v.detach().cpu().clone() for k, v in raw.state_dict().items()}
    if best["state"] is not None:
        raw.load_state_dict(best["state"])
    test_correct, test_total = _evaluate(raw, test_shard, loop, device, None)
    test_correct, test_total = _all_reduce([test_correct, test_total])
    test = {"test_accuracy": test_correct / max(test_total, 1), "test_images": int(test_total)}
    metrics = {"final": True, "best_epoch": best["epoch"], **test}
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(folder, model_state=last, optimizer_state=optimizer.state_dict(),
                            epoch=loop["epochs"] - 1, history=history, best=best,
                            model_config=loop["model"], test=test)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics)
