"""napari dock widgets: the only package that imports napari, magicgui or qtpy."""
