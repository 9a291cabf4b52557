"""Tables and maps: numpy/pandas/scikit-learn/umap-learn, imported lazily; no torch, no napari."""
