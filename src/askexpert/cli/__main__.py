"""``python -m askexpert.cli``: the same command line as ``askexpert``."""

import sys

from askexpert.cli import main

sys.exit(main())
