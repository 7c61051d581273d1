"""Ray job entry point for the end-to-end model; same options as ``kernelbank train``.

    ray job submit --working-dir . -- python jobs/train_end_to_end.py \
        --input s3://bucket/textures --output s3://bucket/run --workers 4 --use-gpu

Inside a job, ``ray.init()`` joins the cluster through the ``RAY_ADDRESS`` the job
runner sets; input, output and checkpoint storage must be shared (s3://, gs://, NFS).
Resubmitting with the same ``--output`` (and ``--run-name``) resumes from the latest
checkpoint.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # the shipped working dir

from kernelbank.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
