"""The dual-masking engine: torch and numpy only (never napari, Qt or magicgui)."""
