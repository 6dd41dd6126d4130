"""Iterative reconstruction algorithms, one module per mode."""
