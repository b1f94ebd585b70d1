"""`ganime import` as a Ray job entry point:

    ray job submit --working-dir . -- python jobs/import.py animegan2|pix2pix|cyclegan FILE --name NAME [ARGS]

Runs the same code as the CLI, on the cluster the job was submitted to: FILE is read where the job runs (an
s3:// URI, or a path on that machine) and the package lands in the store, not in the job's working directory.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir, when not pip-installed

from ray_ganime.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["import", *sys.argv[1:]]))
