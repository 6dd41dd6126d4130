"""Forward models and training-data generators, one module per mode."""
