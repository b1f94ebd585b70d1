import sys

from ray_ganime.cli import main

sys.exit(main())
