"""`python -m worker serve`: the worker server (worker/cli.py)."""

import sys

from worker.cli import main

sys.exit(main())
