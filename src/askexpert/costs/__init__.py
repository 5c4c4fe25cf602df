"""Costs: energy profiles (modelled, every figure with a public source)."""
