"""Ray job entry point for the whole pipeline; same options as ``kernelbank run``.

    ray job submit --working-dir . -- python jobs/pipeline.py --help

Inside a job, ``ray.init()`` joins the cluster through the ``RAY_ADDRESS`` the job
runner sets; input and output must be shared storage (s3://, gs://, NFS).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the shipped working dir

from kernelbank.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
