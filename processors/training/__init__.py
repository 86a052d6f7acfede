"""Model training: point-in-time datasets, algorithms by name with their backends, and the train entry point."""
