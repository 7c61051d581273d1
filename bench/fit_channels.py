"""Benchmark: vector (3-channel) AR fits against one-channel fits at the same radius.

For colour texture images (the two colour photographs scikit-image ships, cut into
size × size tiles), prints the images/s of ``kb.fit`` on the RGB images with a
``channels=3`` basis and on their luminance with the one-channel basis of the same kind
and radius (one thread, CPU time, best of interleaved rounds, as ``bench/fit.py``), and
the cost ratio ``rate(C=1) / rate(C=3)``. Full bases go through the lag engine's window
sums (every channel pair's lags), isotropic ones through each channel's ring planes and
one Gram of all of them.

Target: ≤ 9, the ratio of the Gram sizes (a vector model of 3 channels has 3× the
regressors of one channel; its Gram holds 9× the products).

Usage: ``python bench/fit_channels.py [--quick]`` (also ``python bench/fit.py
--channels``). Absolute times on a shared machine are noise; the ratio is the result.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import kernelbank as kb
from fit import interleaved_rates

TARGET = 9.0
CASES = (("isotropic", 4), ("full", 2), ("full", 4))


def colour_tiles(size: int, count: int) -> np.ndarray:
    """(count, 3, size, size) float32 tiles of the colour texture photographs."""
    from skimage import data
    from skimage.transform import resize
    sources = [data.immunohistochemistry(), data.hubble_deep_field()[:512, :512]]
    out = []
    for i in range(count):
        source = sources[i % len(sources)].astype(np.float32) / 255
        per_row = source.shape[1] // size
        if per_row >= 2:
            k = (i // len(sources)) % (per_row * per_row)
            r, c = divmod(k, per_row)
            tile = source[r * size:(r + 1) * size, c * size:(c + 1) * size]
        else:
            rolled = np.roll(source, 37 * (i // len(sources)), axis=(0, 1))
            tile = resize(rolled, (size, size), anti_aliasing=True).astype(np.float32)
        out.append(tile.transpose(2, 0, 1))
    return np.stack(out)


def luminance(images: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (n, 3, H, W) images, (n, H, W)."""
    return np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), images, axes=([0], [1]))


def channel_rates(sizes_counts, cases=CASES, rounds: int = 5) -> list[tuple]:
    """(size, basis kind, radius, rate C=1, rate C=3, cost ratio) rows, one thread."""
    torch.set_num_threads(1)
    rows = []
    for size, count in sizes_counts:
        colour = torch.from_numpy(colour_tiles(size, count))
        grey = torch.from_numpy(luminance(colour.numpy()))
        for kind, radius in cases:
            one = getattr(kb.Basis, kind)(radius)
            three = getattr(kb.Basis, kind)(radius, channels=3)
            rate = interleaved_rates({"one": lambda: kb.fit(grey, one),
                                      "three": lambda: kb.fit(colour, three)}, count, rounds)
            rows.append((size, kind, radius, rate["one"], rate["three"],
                         rate["one"] / rate["three"]))
    return rows


def print_rates(rows) -> None:
    print("\n3 channels vs 1, 1 thread (images/s of CPU time; best of interleaved rounds)")
    print(f"{'size':>5}  {'basis':<10}{'r':>2}{'C=1 images/s':>14}{'C=3 images/s':>14}"
          f"{'cost C=3 / C=1':>16}")
    for size, kind, radius, one, three, ratio in rows:
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(f"{size:>5}  {kind:<10}{radius:>2}{one:>14.1f}{three:>14.1f}{ratio:>16.2f}"
              f"  (target <= {TARGET:g}: {verdict})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, for a smoke run")
    args = parser.parse_args(argv)
    channel_section(args.quick)


def channel_section(quick: bool) -> None:
    """The table, at smoke-test sizes when ``quick``."""
    sizes = ((128, 16),) if quick else ((128, 64), (576, 4))
    print_rates(channel_rates(sizes, rounds=2 if quick else 5))


if __name__ == "__main__":
    main()
