import subprocess
import sys

#: The modules whose code runs in Ray workers that compute no tensor: read and decode
#: tasks, the write tasks (the sink), the progress counter, the reduce and classify file
#: tasks, and the stage modules they are pickled from.
NON_COMPUTE_MODULES = ("kernelbank", "kernelbank.io", "kernelbank.io.readers",
                       "kernelbank.io.decode", "kernelbank.io.records", "kernelbank.io.tables",
                       "kernelbank.io.atomic", "kernelbank.io.layout", "kernelbank.io.runs",
                       "kernelbank.stages.progress", "kernelbank.stages.common",
                       "kernelbank.stages.table", "kernelbank.stages.fit",
                       "kernelbank.stages.reduce", "kernelbank.stages.features",
                       "kernelbank.stages.classify", "kernelbank.stages.pipeline",
                       "kernelbank.core.ridge")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_core_imports_no_ray_sklearn_or_io():
    # every public name resolved: the lazy package must not hide an import
    code = ("import sys, kernelbank, kernelbank.core; "
            "[getattr(kernelbank.core, n) for n in kernelbank.core.__all__]; "
            "[getattr(kernelbank, n) for n in kernelbank.__all__]; "
            "bad = [m for m in ('ray', 'sklearn', 'pyarrow', 'fsspec', 's3fs', 'matplotlib') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = _run(code)
    assert done.returncode == 0, f"kernelbank.core pulled in {done.stdout.strip()} {done.stderr}"


def test_non_compute_worker_modules_import_no_torch():
    # nor ray.data: a plain task worker (reduce, features, classify file tasks) would pay
    # about a second to import it for nothing
    code = ("import importlib, sys; "
            f"[importlib.import_module(m) for m in {NON_COMPUTE_MODULES!r}]; "
            "bad = [m for m in ('torch', 'ray.data') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = _run(code)
    assert done.returncode == 0, f"worker modules imported {done.stdout} {done.stderr}"


def test_lazy_names_are_the_definitions():
    # ``kernelbank.fit`` stays the function even after the submodule ``core.fit`` is imported
    code = ("import kernelbank.core.stats, kernelbank.core.fit, kernelbank as kb; "
            "from kernelbank.core.fit import fit; "
            "assert kb.fit is fit and kb.core.fit is fit, (kb.fit, kb.core.fit); "
            "assert kb.ClassStats is kernelbank.core.stats.ClassStats; "
            "assert callable(kb.core.features.bank_feature_names)")
    done = _run(code)
    assert done.returncode == 0, done.stderr
    missing = _run("import kernelbank as kb; kb.no_such_name")
    assert "has no attribute 'no_such_name'" in missing.stderr


def test_the_kernel_heads_tasks_import_no_scikit_learn():
    # every feature task gathers its file's part of the sample, every scoring task scores
    # its rows: importing scikit-learn there cost each worker about a second (the
    # features stage of a small run tripled)
    code = ("import sys, pyarrow as pa; "
            "from kernelbank.stages.classify import gather_head_input; "
            "t = pa.table({'id': ['a', 'b'], 'label': ['x', 'y'], 'split': ['train'] * 2, "
            "'f': [1.0, 2.0]}); "
            "part = gather_head_input(t, ['f'], ('sample', 1)); assert len(part[1]) == 2; "
            "import numpy as np; from kernelbank.stages.classify import _scores; "
            "model = {'head': 'nystroem', 'landmarks': np.ones((3, 1)), 'x_mean': 0.0, "
            "'x_scale': 1.0, 'gamma': 1.0, 'weights': np.ones((3, 2)), 'intercept': 0.0, "
            "'classes': ['x', 'y']}; assert _scores(model, np.ones((4, 1))).shape == (4, 2); "
            "bad = [m for m in ('sklearn', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = _run(code)
    assert done.returncode == 0, f"gathering the sample imported {done.stdout} {done.stderr}"
