"""``kernelbank datasets``: the CLI writes the layout and prints the per-class counts."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kernelbank.cli import main


def test_textures_command(tmp_path, capsys):
    assert main(["datasets", "textures", str(tmp_path / "tex"), "--patch-size", "128"]) == 0
    line = capsys.readouterr().out.strip()
    # 512 / 128 = 4 rows and 4 columns: round(0.3 * 4) = 1 test column, and the 32-pixel
    # gap leaves (384 - 32) // 128 = 2 train columns.
    assert line == (f"wrote {tmp_path / 'tex'}: "
                    "train 48 (brick=8, grass=8, gravel=8, moon=8, starfield=8, tissue=8); "
                    "test 24 (brick=4, grass=4, gravel=4, moon=4, starfield=4, tissue=4)")
    files = sorted((tmp_path / "tex" / "test" / "gravel").glob("*.png"))
    assert [f.name for f in files] == [f"gravel_{r:04d}_0384.png" for r in (0, 128, 256, 384)]
    with Image.open(files[0]) as image:
        assert image.size == (128, 128)


def test_synthetic_command(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["datasets", "synthetic", str(out), "--classes", "3", "--per-class", "2",
                 "--size", "32", "--seed", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == (f"wrote {out}: train 6 (gmrf0=2, gmrf1=2, gmrf2=2); "
                    "test 6 (gmrf0=2, gmrf1=2, gmrf2=2)")
    assert len(list(out.rglob("*.png"))) == 12
    kernels = np.load(out / "kernels.npz")
    assert sorted(kernels.files) == ["gmrf0", "gmrf1", "gmrf2"]
    assert not np.allclose(kernels["gmrf0"], kernels["gmrf1"])


def test_bad_arguments_exit_with_message(tmp_path, capsys):
    assert main(["datasets", "textures", str(tmp_path), "--patch-size", "600"]) == 2
    assert "no train patch" in capsys.readouterr().err
