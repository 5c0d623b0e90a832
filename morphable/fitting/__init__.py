"""Optimisation: fitting face models to landmarks (linear, eos-style; perspective refinement; multi-image)."""
