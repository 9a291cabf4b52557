"""Package-level rules: cheap headless imports, layering, manifest, sample data."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_segrep

ROOT = Path(__file__).resolve().parents[1]
GUI_MODULES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def _modules_after(code: str) -> set[str]:
    """Top-level modules loaded by ``code`` in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.splitlines()[-1])}


def test_package__import_is_cheap_and_headless():
    loaded = _modules_after("import napari_segrep")
    heavy = {"torch", "torchvision", "umap", "sklearn", "pandas", "scipy", "numba", *GUI_MODULES}
    assert not loaded & heavy, loaded & heavy


def test_package__engine_analysis_and_cli_never_load_gui_modules():
    import napari_segrep.analysis as analysis
    import napari_segrep.engine as engine

    names = [f"napari_segrep.engine.{m.name}" for m in pkgutil.walk_packages(engine.__path__)]
    names += [f"napari_segrep.analysis.{m.name}" for m in pkgutil.walk_packages(analysis.__path__)]
    names += ["napari_segrep.cli", "napari_segrep._sample_data"]
    code = "\n".join(f"import {n}" for n in names)
    code += "\nimport napari_segrep as sr\nsr.SegmentEncoder\nsr.embed_segments\nsr.write_table"
    loaded = _modules_after(code)
    assert "torch" in loaded  # the imports really happened
    assert not loaded & set(GUI_MODULES), loaded & set(GUI_MODULES)


def test_package__public_api_names_resolve():
    for name in napari_segrep.__all__:
        assert getattr(napari_segrep, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        napari_segrep.nope  # noqa: B018


def test_package__version_matches_metadata_and_torch_is_a_range():
    from importlib.metadata import requires, version

    assert version("napari-segrep") == napari_segrep.__version__
    deps = " ".join(requires("napari-segrep"))
    assert "torch>=" in deps and "torch==" not in deps and "torchvision==" not in deps


def test_manifest__validates_and_is_registered():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-segrep")
    assert manifest.name == "napari-segrep"
    result = subprocess.run(["npe2", "validate", "napari-segrep"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("key", ["cells", "coins"])
def test_manifest__sample_data_commands_return_image_and_labels(key):
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-segrep")
    sample = {s.key: s for s in manifest.contributions.sample_data}[key]
    command = {c.id: c for c in manifest.contributions.commands}[sample.command]
    module, function = command.python_name.split(":")
    layers = getattr(importlib.import_module(module), function)()
    (image, _, kind_i), (labels, _, kind_l) = layers
    assert (kind_i, kind_l) == ("image", "labels")
    assert image.shape[:2] == labels.shape and np.issubdtype(labels.dtype, np.integer)
    assert labels.max() >= 10


def test_sample_cells__classes_are_balanced_and_segments_separate():
    from napari_segrep._sample_data import CELL_CLASSES, make_cells

    image, labels, classes = make_cells(seed=1)
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    assert sorted(classes) == list(range(1, labels.max() + 1))
    counts = {c: list(classes.values()).count(c) for c in CELL_CLASSES}
    assert min(counts.values()) >= 30
    assert set(np.unique(labels)) == {0, *classes}
