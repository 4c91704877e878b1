"""`python -m frontend serve` / `health`: a thin entry point to the server in frontend/."""

import sys

from frontend.cli import main

sys.exit(main())
