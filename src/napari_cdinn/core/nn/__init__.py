"""Networks, bundled-model registry, inference and training."""
