"""``python -m askexpert`` (and ``torchrun ... -m askexpert train ...``): the command line."""

from askexpert.cli import main

raise SystemExit(main())
