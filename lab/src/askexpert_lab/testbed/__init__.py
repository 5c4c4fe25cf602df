"""An emulated edge device next to a pinned server on one host (see :mod:`askexpert_lab.testbed.placement`)."""
