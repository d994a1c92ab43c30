"""Training: one job per module (docs/CONTRACTS.md, "Training package").

Nothing is imported here, so a module of this package loads only what it needs.
"""
