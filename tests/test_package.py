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
    heavy = {"torch", "torchvision", "umap", "sklearn", "pandas", "scipy", "numba", "timm"}
    heavy |= set(GUI_MODULES)
    assert not loaded & heavy, loaded & heavy


def _submodules(package: str) -> list[str]:
    module = importlib.import_module(package)
    return [m.name for m in pkgutil.walk_packages(module.__path__, prefix=f"{package}.")]


def test_package__engine_analysis_and_cli_never_load_gui_modules():
    names = _submodules("napari_segrep.engine") + _submodules("napari_segrep.analysis")
    names += _submodules("napari_segrep.cli")
    names += ["napari_segrep.cli", "napari_segrep._sample_data", "napari_segrep.io"]
    assert "napari_segrep.engine.losses.tico" in names and "napari_segrep.cli.embed" in names
    code = "\n".join(f"import {n}" for n in names)
    code += "\nimport napari_segrep as sr\nsr.SegmentEncoder\nsr.embed_segments\nsr.write_table"
    loaded = _modules_after(code)
    assert "torch" in loaded  # the imports really happened
    assert not loaded & set(GUI_MODULES), loaded & set(GUI_MODULES)
    assert "timm" not in loaded  # imported only when a ViT is built


def test_package__analysis_io_errors_and_the_cli_parser_never_load_torch():
    names = _submodules("napari_segrep.analysis")
    names += ["napari_segrep.io", "napari_segrep.errors", "napari_segrep._version"]
    names += ["napari_segrep._images", "napari_segrep._tiff_meta", "napari_segrep.catalogue"]
    names += ["napari_segrep.weights", "napari_segrep._download"]
    code = "\n".join(f"import {n}" for n in names)
    code += "\nfrom napari_segrep.cli import get_arg_parser\nget_arg_parser()"
    loaded = _modules_after(code)
    assert "sklearn" not in loaded or "pandas" in loaded  # the imports really happened
    assert "pandas" in loaded
    assert not loaded & {"torch", "torchvision", *GUI_MODULES}, loaded & {"torch", *GUI_MODULES}


def test_package__thumbnails_and_segment_windows_never_load_torch():
    """The gallery shows thumbnails before (and without) torch: engine.thumbnails and
    engine.segments import it only where a large segment is resampled for the encoder."""
    code = (
        "import numpy as np\n"
        "from napari_segrep.engine.thumbnails import segment_thumbnails\n"
        "labels = np.zeros((40, 40), np.int32); labels[5:15, 5:15] = 1\n"
        "segment_thumbnails(np.random.rand(40, 40), labels, [1], size=16)\n"
    )
    loaded = _modules_after(code)
    assert "scipy" in loaded  # the imports really happened (engine.segments needs scipy)
    assert not loaded & {"torch", "torchvision", *GUI_MODULES}, loaded & {"torch", *GUI_MODULES}


# Which parts of the package may import which (every import counts, also inside functions):
# imports only go downward, and _widgets never imports the CLI.
_BASE = {"_version", "errors", "io", "_images", "_tiff_meta", "catalogue"}
_MAY_IMPORT = {
    "_version": set(),
    "catalogue": set(),  # the backbones as facts: standard library only
    "_images": set(),
    "_tiff_meta": {"_images"},
    "errors": set(),
    "_pairing": set(),
    "io": {"_version", "errors", "_pairing"},
    "_sample_data": _BASE,
    "engine": _BASE | {"engine"},
    "analysis": _BASE | {"analysis"},
    "_download": _BASE,
    "weights": _BASE | {"engine", "_download"},
    # refining an encoder trains it (engine) and compares classifiers (analysis)
    "refine": _BASE | {"engine", "analysis"},
    "_widgets": _BASE | {"engine", "analysis", "_sample_data", "weights", "refine", "_widgets"},
    "cli": _BASE | {"engine", "analysis", "_sample_data", "weights", "refine", "_widgets", "cli"},
}


def _package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (resolved), from the source files."""
    import ast

    src = ROOT / "src" / "napari_segrep"
    graph: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(["napari_segrep", *parts])
        package = name if is_package else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t.startswith("napari_segrep.")}
        graph[name] = found
    modules = set(graph)
    # "from . import x" names a module; "from .m import f" names m.f: keep real modules
    return {
        k: {t if t in modules else t.rpartition(".")[0] for t in v} & modules
        for k, v in graph.items()
    }


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_package__imports_only_go_downward():
    graph = _package_imports()
    assert "napari_segrep.engine.embed" in graph["napari_segrep.cli.embed"]  # read for real
    wrong = [
        f"{m} imports {t}"
        for m, targets in graph.items()
        for t in targets
        if _part(m) in _MAY_IMPORT and _part(t) not in _MAY_IMPORT[_part(m)]
    ]
    assert not wrong, wrong


def test_package__no_import_cycles():
    graph = _package_imports()
    # a package's __init__ re-exporting its modules is not a cycle
    edges = {
        m: {t for t in targets if t != m and not (t.startswith(f"{m}.") or m.startswith(f"{t}."))}
        for m, targets in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_package__public_api_names_resolve():
    for name in napari_segrep.__all__:
        assert getattr(napari_segrep, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        napari_segrep.nope  # noqa: B018


def test_package__read_table_is_public_beside_write_table():
    """Issue 22, item 14: ``sr.read_table`` reads back what ``sr.write_table`` writes."""
    from napari_segrep.analysis import export

    assert napari_segrep.read_table is export.read_table
    assert napari_segrep.write_table is export.write_table
    assert {"read_table", "write_table"} <= set(napari_segrep.__all__) & set(dir(napari_segrep))
    loaded = _modules_after("import napari_segrep as sr\nsr.read_table")
    assert "pandas" in loaded and not loaded & {"torch", *GUI_MODULES}, loaded


def test_package__public_names_have_one_source():
    """``_LAZY`` (name -> module) is the one list: ``__all__`` is made from it, and the imports
    for type checkers name the same names from the same modules."""
    import ast

    lazy = napari_segrep._LAZY
    assert napari_segrep.__all__ == ["__version__", *sorted(lazy)]
    tree = ast.parse((ROOT / "src" / "napari_segrep" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n))
    typed = {
        alias.name: "napari_segrep." + node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert typed == lazy
    for name, module in lazy.items():
        assert name in importlib.import_module(module).__all__, (name, module)


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
