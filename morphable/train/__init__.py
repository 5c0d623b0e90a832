"""Training data and utilities: the synthetic face generator (more to come with the learning work)."""
