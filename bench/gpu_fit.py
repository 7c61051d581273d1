"""kb.fit on a CUDA GPU against the card's own limits (run by bench/gpu.sh).

For 256×256 and 576×576 float32 images (isotropic radius 4) prints images/s of kb.fit,
and two ceilings measured on the same card in the same run:

* memory: bytes the fit must read once (the images) over the device-to-device copy
  rate — the rate a single streaming pass could reach;
* compute: 320 flop per valid pixel over the float32 matmul rate.
"""

from __future__ import annotations

import torch

import kernelbank as kb

FLOP_PER_PIXEL = 320


def timed(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeats


def main() -> None:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    big = torch.empty(256 << 20, dtype=torch.uint8, device=device)
    other = torch.empty_like(big)
    copy_rate = 2 * big.numel() / timed(lambda: other.copy_(big))   # read + write bytes/s
    torch.backends.cuda.matmul.allow_tf32 = False     # a true float32 rate, as kb.fit uses
    a = torch.randn(8192, 8192, device=device)
    matmul_rate = 2 * 8192**3 / timed(lambda: a @ a, repeats=5)
    print(f"{name}: copy {copy_rate / 1e9:.0f} GB/s, float32 matmul {matmul_rate / 1e12:.1f} TFLOP/s")
    basis = kb.Basis.isotropic(4)
    print(f"{'size':>5} {'batch':>6} {'images/s':>10} {'of copy limit':>14} {'of matmul limit':>16}")
    for size, batch in ((256, 512), (576, 128)):
        images = torch.randn(batch, size, size, device=device)
        seconds = timed(lambda: kb.fit(images, basis), repeats=5)
        rate = batch / seconds
        read_limit = copy_rate / 2 / (size * size * 4)                 # images/s reading once
        flop_limit = matmul_rate / ((size - 8) ** 2 * FLOP_PER_PIXEL)
        print(f"{size:>5} {batch:>6} {rate:>10.0f} {rate / read_limit:>14.1%} {rate / flop_limit:>16.1%}")


if __name__ == "__main__":
    main()
