"""askexpert's lab: what measures the product (``askexpert``), kept apart from what a deployment installs.

- :mod:`askexpert_lab.testbed`: the emulated edge (pinned processes, device pacers, shaped links, competing load)
- :mod:`askexpert_lab.bench`: the bench (edge only, full offload, static and progressive experts) and its report
- :mod:`askexpert_lab.demo`: ``askexpert demo``, the whole system on an emulated edge
- :mod:`askexpert_lab.han`: the han100 renderer (``askexpert data build han100``)
- :mod:`askexpert_lab.server_pacing`: a server paced to a near-edge accelerator (``serve --server-device``)
- :mod:`askexpert_lab.cli`: the commands it adds to ``askexpert`` (entry points, ``askexpert.extensions``)

It imports the product, never the reverse (``tests/test_architecture.py``).
"""
