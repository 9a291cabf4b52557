"""A table of many images, browsed in the segment gallery without opening them in napari.

:func:`open_table_collection` reads a table that ``napari-segrep embed`` wrote (``--data DIR``
or ``--images/--labels``: an ``image`` column naming each row's pair; or one ``IMAGE LABELS``
pair) and its JSON provenance sidecar, which names every image's and labels' files.  The
:class:`TableCollection` it returns looks like a :class:`~._group.ResultsGroup` to the gallery's
:class:`~._gallery_source.GallerySource`: one :class:`FileMember` per image whose ``run`` holds
the file *paths*, so each image is read only when a thumbnail of it is first asked for
(:class:`~napari_segrep.engine.thumbnails.ThumbnailSource` reads paths lazily).

Nothing here changes the table: a collection has no map and no labels layers, so annotating
needs the segments open in napari (Embed segments); the selection is the gallery's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from napari.utils.events import EmitterGroup

from ..engine.thumbnails import BBOX_COLUMNS
from ._results import ANNOTATION, with_classes

__all__ = ["FileMember", "FileRun", "TableCollection", "choose_table", "open_table_collection"]

#: The file dialog's filter of the tables the gallery opens.
TABLE_FILTER = "Tables (*.parquet *.pq *.csv *.h5ad);;All files (*)"
_RERUN = "re-run napari-segrep embed"


@dataclass
class FileRun:
    """How one image of a table was embedded: its files and the embedding's settings (what
    :meth:`~._gallery_source.GallerySource.thumbnail_source` reads)."""

    image: str
    labels: str
    params: dict = field(default_factory=dict)


class FileMember:
    """One image of a table: ``table`` (its rows, in table order, without the ``image``
    column), ``run`` (its files), ``class_colours`` (the table's classes) and no labels layer."""

    labels_layer = None

    def __init__(self, name: str, table: pd.DataFrame, run: FileRun, class_colours: dict):
        self.name, self.table, self.run, self.class_colours = name, table, run, class_colours

    def annotate_rows(self, rows, name) -> None:
        raise ValueError(
            f"annotating needs the segments in napari: open {Path(self.run.image).name} and its "
            "labels, embed them (Embed segments) and annotate there"
        )

    def set_classes(self, colours, *, renamed=None) -> None:
        self.annotate_rows([], None)


class TableCollection:
    """The images of a table, as the gallery follows them (see :func:`open_table_collection`).

    Events: ``selection`` (the gallery's chosen rows), ``points`` (never: the table does not
    change), ``closed``.  Row ``i`` is row ``i`` of the members' tables in order (the table's
    rows grouped by image, images in the order they first appear).
    """

    def __init__(self, path: Path, members: list[FileMember]) -> None:
        self.path = Path(path)
        self.members = members
        self.names = [m.name for m in members]
        self.name = f"{self.path.name} (table, {len(members)} image{'s' * (len(members) != 1)})"
        self.events = EmitterGroup(source=self, selection=None, points=None, closed=None)
        self._selection: frozenset[int] = frozenset()
        self.closed = False

    def __len__(self) -> int:
        return sum(len(m.table) for m in self.members)

    @property
    def selection(self) -> frozenset[int]:
        return self._selection

    def select_rows(self, rows) -> None:
        rows = frozenset(int(r) for r in rows)
        if rows != self._selection:
            self._selection = rows
            self.events.selection()

    def image_file(self, row: int) -> str:
        """The image file of row ``row``."""
        offsets = np.cumsum([len(m.table) for m in self.members])
        return self.members[int(np.searchsorted(offsets, row, side="right"))].run.image

    def close(self) -> None:
        """Stop following this table (the gallery lets it go)."""
        if not self.closed:
            self.closed = True
            self.events.closed()


def open_table_collection(path: str | os.PathLike) -> TableCollection:
    """Read a table of ``napari-segrep embed`` and its sidecar, for the gallery.

    Parameters
    ----------
    path : str or PathLike
        ``OUT.parquet``, ``OUT.csv`` or ``OUT.h5ad``, with its sidecar ``OUT.parquet.json``
        (or an earlier version's ``OUT.json``) beside it.

    Returns
    -------
    TableCollection
        One member per image, holding its files' paths (nothing is read from them here).

    Raises
    ------
    ValueError
        The table or its sidecar is missing, not ours, damaged, lacks columns, or names files
        that are not there any more: the message says which and what to do.
    """
    from ..analysis.export import find_sidecar, read_sidecar, read_table, sidecar_path

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such table")
    sidecar = find_sidecar(path)
    if sidecar is None or not sidecar.is_file():
        raise ValueError(
            f"the table's sidecar {sidecar_path(path).name} is missing: the gallery needs it to "
            f"find the images; put it back beside {path.name}, or {_RERUN}"
        )
    record = read_sidecar(sidecar, table=path, fix=f"restore it, or {_RERUN}")
    if record is None:
        raise ValueError(
            f"{sidecar.name} is not a napari-segrep provenance record: the gallery cannot find "
            f"the images of {path.name}; {_RERUN}"
        )
    try:
        df = read_table(path)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    files = _image_files(record, path, sidecar)
    if "image" not in df.columns:
        if len(files) != 1:
            raise ValueError(
                f"{path.name} has no 'image' column but {sidecar.name} lists {len(files)} "
                f"images: the gallery cannot tell which row is of which image; {_RERUN}"
            )
        df = df.assign(image=next(iter(files)))
    _check_columns(df, path)
    names = [str(n) for n in pd.unique(df["image"].astype(str))]
    unknown = [n for n in names if n not in files]
    if unknown:
        raise ValueError(
            f"image {unknown[0]} of {path.name} is not listed in {sidecar.name}: the table "
            f"and its sidecar do not belong together; {_RERUN}"
        )
    params = {"channel_axis": record.get("channel_axis"), "normalize": _normalize_of(record)}
    colours = with_classes({}, _classes(df))
    image_column = df["image"].astype(str).to_numpy()
    members = []
    for name in names:
        rows = df[image_column == name].drop(columns="image").reset_index(drop=True)
        image, labels = files[name]
        run_params = {**params, **_layout_of(record, name)}
        members.append(FileMember(name, rows, FileRun(image, labels, run_params), colours))
    return TableCollection(path, members)


def _layout_of(record: dict, name: str) -> dict:
    """The ``axes`` and ``spacing`` the sidecar records for image ``name`` (a collection's per
    image, else the run's), as ``embed_segments`` takes them; ``{}`` where it says none or
    something that is not a layout (then the table's columns say what the objects are)."""
    from .._images import AXES

    layout = record.get("layout")
    images = record.get("images")
    if isinstance(images, list):
        mine = [r for r in images if isinstance(r, dict) and str(r.get("name")) == name]
        layout = mine[0].get("layout") if mine else layout
    if not isinstance(layout, dict) or layout.get("axes") not in AXES:
        return {}
    spacing = layout.get("spacing")
    numbers = isinstance(spacing, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < float("inf")
        for v in spacing
    )
    if not numbers or len(spacing) != len(layout["axes"].replace("t", "")):
        spacing = None
    return {"axes": layout["axes"], "spacing": None if spacing is None else tuple(spacing)}


def _image_files(record: dict, path: Path, sidecar: Path) -> dict[str, tuple[str, str]]:
    """Image name -> (image path, labels path), each checked to exist."""
    images = record.get("images")
    if isinstance(images, list):  # a collection
        pairs = [(str(r.get("name")), r.get("image"), r.get("labels")) for r in images]
    else:  # one IMAGE LABELS pair: its paths as given on the command line
        inputs = record.get("inputs") if isinstance(record.get("inputs"), dict) else {}
        image, labels = inputs.get("image"), inputs.get("labels")
        if not image or not labels:
            raise ValueError(
                f"{sidecar.name} names no image files (it is not from napari-segrep embed): "
                f"the gallery cannot find the images of {path.name}; {_RERUN}"
            )
        image, labels = (_locate(p, path) for p in (image, labels))
        pairs = [(Path(image).stem, image, labels)]
    out = {}
    for name, image, labels in pairs:
        for role, file in (("image", image), ("labels", labels)):
            if not file or not Path(file).is_file():
                raise ValueError(
                    f"{role} {Path(file or '?').name} of {name} listed in {sidecar.name} is not "
                    f"there any more ({file}): put it back, or {_RERUN} on the files where they "
                    "are now"
                )
        out[name] = (str(image), str(labels))
    return out


def _locate(file: str, table: Path) -> str:
    """A path recorded as given: absolute, else from the working folder, else from the
    table's folder."""
    given = Path(file)
    if given.is_absolute() or given.exists():
        return str(given.resolve()) if given.exists() else file
    beside = table.parent / given
    return str(beside.resolve()) if beside.exists() else file


def _check_columns(df: pd.DataFrame, path: Path) -> None:
    missing = [c for c in ("label", *BBOX_COLUMNS) if c not in df.columns]
    if not any(str(c).startswith("emb_") for c in df.columns):
        missing.append("emb_*")
    if missing:
        raise ValueError(
            f"{path.name} lacks the columns {', '.join(missing)}: the gallery needs an "
            f"embedding table of napari-segrep embed; {_RERUN}"
        )


def _normalize_of(record: dict):
    """The embedding's ``normalize`` setting from the sidecar (a collection records it; one
    pair records the normalisation it computed)."""
    if "normalize" in record:
        value = record["normalize"]
        return tuple(value) if isinstance(value, list) else value
    described = record.get("normalization") or {}
    mode = described.get("mode", "image")
    if mode == "fixed":
        return tuple(np.asarray(described[k], float) for k in ("low", "high"))
    return None if mode == "none" else mode


def _classes(df: pd.DataFrame) -> list[str]:
    names: set[str] = set()
    for column in (ANNOTATION, "class_predicted"):
        if column in df.columns:
            values = df[column].dropna().astype(str)
            names.update(v for v in values if v)
    return sorted(names)


def choose_table(parent) -> str | None:
    """Ask for a table file (None: cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(
        parent, "Open an embedding table (napari-segrep embed)", "", TABLE_FILTER
    )
    return path or None
