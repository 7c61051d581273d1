"""A missing or empty --input fails before Ray starts and before the output exists."""

import subprocess
import sys

import pytest

_CODE = ("import sys; from kernelbank.cli import main; rc = main(sys.argv[1:]); "
         "import ray; print('ray started' if ray.is_initialized() else 'no ray'); sys.exit(rc)")


@pytest.mark.parametrize("command", ["run", "fit"])
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_bad_input_fails_before_ray_and_output(tmp_path, command, kind):
    source = tmp_path / "images"
    if kind == "empty":
        (source / "cat").mkdir(parents=True)        # folders, but no image in them
        (source / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", _CODE, command, "--input", str(source),
                           "--output", str(output)], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert ("does not exist" if kind == "missing" else "is empty") in done.stderr
    assert done.stdout.strip() == "no ray"
    assert not output.exists()
