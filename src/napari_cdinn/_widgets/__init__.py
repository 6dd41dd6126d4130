"""napari dock widgets: layer plumbing, threads and calls into ``core`` only."""
