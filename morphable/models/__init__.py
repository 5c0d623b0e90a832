"""The statistical face space: :class:`MorphableModel`, its loaders and the model registry."""
