"""Benchmarks and reports: baselines, sweeps, the paper-scale run and their reports (the offline evaluation of a
system is the product's, askexpert.system.offline). Nothing imports this package but the lab's CLI and benchmarks/."""
