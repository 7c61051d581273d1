import subprocess
import sys


def test_core_imports_no_ray_sklearn_or_io():
    code = ("import sys, kernelbank, kernelbank.core; "
            "bad = [m for m in ('ray', 'sklearn', 'pyarrow', 'fsspec', 's3fs', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"kernelbank.core pulled in {done.stdout.strip()}"
