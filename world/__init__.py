"""Synthetic behaviour world: a seeded population, its events, and the ground truth."""
