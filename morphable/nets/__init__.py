"""Networks and differentiable layers (regressors, the 3DMM spatial transformer)."""
