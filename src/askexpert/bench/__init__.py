"""Benchmarks and reports: baselines, sweeps, offline system evaluation. Nothing imports this package
except the CLI and the scripts under benchmarks/."""
