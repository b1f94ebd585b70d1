"""`ganime data ingest` as a Ray job entry point:

    ray job submit --working-dir . -- python jobs/ingest.py [ARGS]

Runs the same code as the CLI, locally or on the cluster the job was submitted to.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from ray_ganime.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["data", "ingest", *sys.argv[1:]]))
