"""The commands the lab adds to ``askexpert`` (demo, testbed, bench, data, load): one module a command, each with
``register(sub)``, found by the product's CLI through the ``askexpert.commands`` entry points."""
