"""A kernel-throttled edge next to a pinned server on one host (see :mod:`askexpert.testbed.placement`)."""
