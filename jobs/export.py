"""`ganime export` as a Ray job entry point:

    ray job submit --working-dir . -- python jobs/export.py CHECKPOINT --name NAME [--onnx] [ARGS]

Runs the same code as the CLI, on the cluster the job was submitted to (where the checkpoint's store is
reachable); the package lands in the store, not in the job's working directory.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from ray_ganime.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
