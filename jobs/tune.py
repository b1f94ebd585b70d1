"""`ganime tune` as a Ray job entry point:

    ray job submit --working-dir . -- python jobs/tune.py configs/pix2pix_tv_sweep.yaml [--store s3://...]
    ray job submit --working-dir . -- python jobs/tune.py --resume NAME --store s3://...

Runs the same code as the CLI, on the cluster the job was submitted to.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from ray_ganime.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
