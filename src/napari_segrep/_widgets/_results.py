"""One evented model of an embedding run's results per labels layer: the single source of truth.

The table (``label``, geometry, ``emb_*``, ``frame``, ``cluster``, and the classifier's
``class_annotation``, ``class_predicted``, ``class_probability``, ``class_margin``, ``prob_*``),
the 2D map coordinates of its rows, the selection (rows), the classes and their colours, how
segments are coloured, and the run that produced them (encoder, parameters, the labels as
embedded).  Views (the map's points layer and the labels layer's
features and highlight, see :mod:`._map_view`; live updates, :mod:`._live`) subscribe to
``events`` and never keep their own copy.  Engine and analysis calls do the maths;
:func:`embed_run` is what a Run computes in its worker thread.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from napari.layers import Labels
from napari.utils.events import EmitterGroup

from .. import catalogue as _catalogue
from .._images import Layout

__all__ = [
    "ANNOTATION",
    "PALETTE",
    "RunSetup",
    "SegmentResults",
    "all_results",
    "embed_layout",
    "embed_run",
    "layout_params",
    "prediction_columns",
    "register_map",
    "results_for",
    "run_encoder",
    "shown_by",
    "with_classes",
]

COLOUR_MODES = ("label", "cluster", "class")
#: The classifier's columns of the table: annotations (``""``: none) and predictions.
ANNOTATION = "class_annotation"
PREDICTION_COLUMNS = ("class_predicted", "class_probability", "class_margin")
#: Class colours, in the order classes are added (then repeated).
PALETTE = np.array(
    [
        (0.12, 0.47, 0.71, 1.0),
        (1.00, 0.50, 0.05, 1.0),
        (0.17, 0.63, 0.17, 1.0),
        (0.84, 0.15, 0.16, 1.0),
        (0.58, 0.40, 0.74, 1.0),
        (0.55, 0.34, 0.29, 1.0),
        (0.89, 0.47, 0.76, 1.0),
        (0.74, 0.74, 0.13, 1.0),
        (0.09, 0.75, 0.81, 1.0),
    ]
)

#: The backbones of a new encoder for 2D and for 3D objects when none is chosen: the
#: catalogue's first of each (resnet18; resnet18_3d, native 3D first).
BACKBONE = _catalogue.backbone_choices(2)[0]
VOLUME_BACKBONE = _catalogue.backbone_choices(3)[0]

_by_layer: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: Points layer -> weak reference to what it maps (a SegmentResults or a ResultsGroup).
_by_map: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def all_results() -> list[SegmentResults]:
    """The results of every labels layer that has some."""
    return list(_by_layer.values())


def results_for(layer: Labels) -> SegmentResults | None:
    """The results shown for ``layer`` (None when it was not embedded, or they were dropped)."""
    return _by_layer.get(layer)


def register_map(points, shown) -> None:
    """Record that the Points layer ``points`` draws the map of ``shown`` (a
    :class:`SegmentResults` or a :class:`~._group.ResultsGroup`): point ``i`` is its row ``i``.
    The map views call it whenever they draw; the gallery finds maps through :func:`shown_by`."""
    _by_map[points] = weakref.ref(shown)


def shown_by(points):
    """What the Points layer ``points`` maps (None: not one of our maps, or its results were
    dropped)."""
    ref = _by_map.get(points)
    shown = ref() if ref is not None else None
    if shown is None:
        return None
    members = getattr(shown, "members", None)
    if members is not None:  # a group: closed when its members went
        return shown if members else None
    layer = shown.labels_layer
    return shown if layer is not None and results_for(layer) is shown else None


@dataclass
class RunSetup:
    """What produced the results, so a few segments can be embedded again the same way."""

    encoder: object  # SegmentEncoder (torch stays out of this module)
    params: dict  # keyword arguments of embed_segments (normalisation frozen to numbers; a
    # volume's axes and spacing included)
    image: np.ndarray
    labels: np.ndarray  # the labels as last embedded (live updates diff against these)
    layout: Layout  # what the labels' axes are, and the voxel spacing
    normalization: dict | None = None  # as recorded by embed_segments
    model: str = ""
    checkpoint: str | None = None
    image_layers: list[str] = field(default_factory=list)

    @property
    def stack(self) -> bool:
        """A time-lapse (one row per label and frame): ``layout.has_time``."""
        return self.layout.has_time


def layout_params(layout: Layout) -> dict:
    """``embed_segments``' ``axes`` and ``spacing`` for labels of ``layout``: none for 2D
    objects (``"yx"``, and ``"tyx"``, embedded frame by frame with ``embed_stack``)."""
    if not layout.is_volume:
        return {}
    return {"axes": layout.axes, "spacing": layout.spacing}


def embed_run(
    image,
    labels,
    weights,
    params: dict,
    *,
    layout: Layout,
    model: str,
    checkpoint,
    image_layers,
    progress,
    should_stop,
    backbone: str | None = None,
    volume_backbone: str | None = None,
):
    """What a Run computes, in its worker thread: the table, the PCA map and the
    :class:`RunSetup` (``params``: keyword arguments of ``embed_segments``; ``layout``: the
    labels' axes and spacing; ``backbone``, ``volume_backbone``: the backbone of a new encoder
    for 2D and for 3D objects, None: :data:`BACKBONE`, :data:`VOLUME_BACKBONE`)."""
    from ..analysis.reduce import pca_map
    from ..analysis.tables import embedding_matrix

    encoder = run_encoder(
        weights,
        image,
        layout,
        channel_axis=params["channel_axis"],
        backbone=volume_backbone if layout.is_volume else backbone,
    )
    params = {**params, **layout_params(layout)}
    df = embed_layout(
        image, labels, encoder, layout, progress=progress, should_stop=should_stop, **params
    )
    normalization = df.attrs.get("normalization")
    # Live updates reuse the run's normalisation numbers instead of recomputing the image's
    # percentiles on every paint stroke.
    live_params = dict(params)
    if not layout.has_time:
        from ..engine.segments import normalize_argument

        live_params["normalize"] = normalize_argument(normalization)
    run = RunSetup(
        encoder=encoder,
        params=live_params,
        image=image,
        labels=labels,
        layout=layout,
        normalization=normalization,
        model=model,
        checkpoint=str(checkpoint) if checkpoint else None,
        image_layers=list(image_layers),
    )
    return df, pca_map(embedding_matrix(df)), run


def run_encoder(weights, image, layout: Layout, *, channel_axis, backbone=None, seed: int = 0):
    """The encoder a run embeds with (``encoder_for``: weights by what the user chose: None,
    a weight set name, a checkpoint, an encoder), for the image's channels; a new one
    (untrained or pretrained) is a ``backbone`` (None: :data:`BACKBONE` for 2D objects,
    :data:`VOLUME_BACKBONE` for 3D ones).  ``ValueError`` when the model sees objects of other
    dimensions than the labels'."""
    from .._images import as_channels_first, frame_channel_axis
    from ..engine.embed import encoder_for

    if layout.axes == "tyx":  # embed_stack: a frame's channel axis
        frame = as_channels_first(image[0], channel_axis=channel_axis)
    else:
        frame = image[0] if layout.has_time else image
        axis = frame_channel_axis(channel_axis, layout, np.ndim(image))
        frame = as_channels_first(frame, channel_axis=axis, spatial_ndim=layout.spatial_ndim)
    if backbone is None:
        backbone = VOLUME_BACKBONE if layout.is_volume else BACKBONE
    encoder = encoder_for(weights, in_channels=frame.shape[0], backbone=backbone, seed=seed)
    dims = int(getattr(encoder, "spatial_dims", 2))
    if dims != layout.spatial_ndim:
        what = {2: "2D objects", 3: "3D objects"}
        raise ValueError(
            f"the model ({encoder.backbone_name}) embeds {what[dims]} but the labels are "
            f"{_KINDS[layout.axes]}: choose a model for {what[layout.spatial_ndim]}"
        )
    return encoder


_KINDS = {
    "yx": "2D",
    "tyx": "a time-lapse of 2D frames",
    "zyx": "a z-stack (3D objects)",
    "tzyx": "a time-lapse of volumes",
}


def embed_layout(image, labels, encoder, layout: Layout, **kwargs):
    """``embed_segments`` for labels of ``layout``: 2D as ever, ``"tyx"`` frame by frame
    (``embed_stack``), volumes with their ``axes`` and ``spacing`` (the table's
    ``attrs["layout"]`` says where the spacing came from)."""
    from ..engine.embed import embed_segments, embed_stack

    if layout.axes == "yx":
        return embed_segments(image, labels, encoder, **kwargs)
    if layout.axes == "tyx":
        return embed_stack(image, labels, encoder, **kwargs)
    df = embed_segments(image, labels, encoder, **{**kwargs, **layout_params(layout)})
    df.attrs["layout"] = layout.describe()  # with its source ("napari scale")
    return df


class SegmentResults:
    """The results of embedding one labels layer.

    Events (``results.events.<name>``): ``table`` (rows or columns changed: views redraw
    everything), ``map`` (new map coordinates for the same rows), ``selection``,
    ``colour_by``, ``classes`` (annotations, predictions or the classes' names or colours
    changed; same rows), ``closed`` (the results were dropped: views detach).
    """

    def __init__(
        self,
        labels_layer: Labels,
        table: pd.DataFrame,
        map_model,
        run: RunSetup,
        *,
        previous: SegmentResults | None = None,
    ) -> None:
        """``previous``: the layer's earlier results (closed already, or found and closed
        here), whose classes and annotations carry over to the segments still there."""
        self.events = EmitterGroup(
            source=self,
            table=None,
            map=None,
            selection=None,
            colour_by=None,
            classes=None,
            closed=None,
        )
        self._layer = weakref.ref(labels_layer)
        self._table = table.reset_index(drop=True)
        self.map_model = map_model
        self.coords = _checked_coords(map_model.coords, len(self._table))
        self.run = run
        self._selection: frozenset[int] = frozenset()
        self._colour_by = "label"
        #: class name -> RGBA, in the order the classes were defined
        self.class_colours: dict[str, np.ndarray] = {}
        current = _by_layer.get(labels_layer)
        _by_layer[labels_layer] = self
        previous = previous or current
        if previous is not None:
            self._carry_annotations(previous)  # embedding again keeps the user's annotations
        if current is not None:
            current.close()

    # ------------------------------------------------------------------ state
    @property
    def labels_layer(self) -> Labels | None:
        return self._layer()

    @property
    def table(self) -> pd.DataFrame:
        return self._table

    @property
    def labels(self) -> np.ndarray:
        """The ``label`` column as an array (row order)."""
        return self._table["label"].to_numpy()

    @property
    def map_method(self) -> str:
        return self.map_model.method

    @property
    def selection(self) -> frozenset[int]:
        """Selected rows."""
        return self._selection

    @property
    def colour_by(self) -> str:
        return self._colour_by

    @colour_by.setter
    def colour_by(self, value: str) -> None:
        if value not in COLOUR_MODES:
            raise ValueError(f"colour_by={value!r}: choose one of {COLOUR_MODES}")
        if value == "cluster" and "cluster" not in self._table:
            value = "label"
        if value == "class" and not self.class_colours:
            value = "label"
        if value != self._colour_by:
            self._colour_by = value
            self.events.colour_by()

    def selected_labels(self) -> set[int]:
        return {int(v) for v in self.labels[sorted(self._selection)]}

    # ------------------------------------------------------------------ changes
    def select_rows(self, rows: Iterable[int]) -> None:
        rows = frozenset(int(r) for r in rows)
        if rows != self._selection:
            self._selection = rows
            self.events.selection()

    def select_labels(self, labels: Iterable[int]) -> None:
        """Select every row of these labels (a label has one row per frame in stacks)."""
        wanted = np.asarray(list(labels), dtype=np.int64)
        self.select_rows(np.flatnonzero(np.isin(self.labels, wanted)).tolist())

    def set_map(self, map_model) -> None:
        """A new map (PCA, UMAP, refit) of the same rows."""
        self.coords = _checked_coords(map_model.coords, len(self._table))
        self.map_model = map_model
        self.events.map()

    def set_clusters(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        if ids.shape != (len(self._table),):
            raise ValueError(f"one cluster id per row is needed, got shape {ids.shape}")
        self._table = self._table.assign(cluster=ids)
        self.events.table()
        self._colour_by = "cluster"
        self.events.colour_by()

    def replace_rows(
        self,
        rows: pd.DataFrame | None,
        removed: np.ndarray,
        *,
        labels_now: np.ndarray,
        coords: np.ndarray,
    ) -> None:
        """Live update: rows of re-embedded segments replace theirs, new ones are added at
        ``coords`` (their place in the current map, from its ``transform`` in a worker thread:
        the map process may be busy), removed ones dropped; every other row and its map
        coordinates stay exactly as they were."""
        from ..analysis.tables import replace_rows

        if rows is None:
            rows = self._table.iloc[:0]
        new_coords = np.asarray(coords, float).reshape(len(rows), 2)
        merged, keep, order = replace_rows(self._table, rows, drop=removed)
        self.coords = np.concatenate([self.coords[keep], new_coords])[order]
        self._table = merged
        self._selection = frozenset()
        self.run.labels = labels_now
        self.events.table()

    def replace_embeddings(self, table: pd.DataFrame, map_model, run: RunSetup) -> None:
        """The same segments as embedded by another encoder (an encoder refinement accepted,
        or reverted): ``table``, its map and its run replace these; the annotations stay the
        user's (carried by segment, whatever ``table`` holds).  Views redraw everything."""
        from ..analysis.classify import segment_keys

        table = table.reset_index(drop=True)
        keys = segment_keys(table)
        merged = table[keys].merge(self.annotation_frame(), on=keys, how="left")["class"]
        table = table.assign(**{ANNOTATION: merged.fillna("").to_numpy(dtype=object)})
        self.coords = _checked_coords(map_model.coords, len(table))
        self._table, self.map_model, self.run = table, map_model, run
        self._selection = frozenset()
        self.events.table()
        self.events.map()

    # ------------------------------------------------------------------ classes
    @property
    def annotations(self) -> np.ndarray:
        """Each row's annotated class (``""``: not annotated), as an object array."""
        if ANNOTATION not in self._table:
            return np.full(len(self._table), "", dtype=object)
        return self._table[ANNOTATION].to_numpy(dtype=object)

    def annotation_frame(self) -> pd.DataFrame:
        """The annotated rows' keys (``frame``, ``label``) and ``class``, for
        ``train_classifier``."""
        from ..analysis.classify import segment_keys

        ann = self.annotations
        rows = np.flatnonzero(ann != "")
        out = self._table.iloc[rows][segment_keys(self._table)].reset_index(drop=True)
        out["class"] = ann[rows]
        return out

    def _carry_annotations(self, previous: SegmentResults) -> None:
        """The classes and the annotations of the segments that are still there."""
        from ..analysis.classify import segment_keys

        if not previous.class_colours:
            return
        self.class_colours = dict(previous.class_colours)
        keys = segment_keys(self._table)
        old = previous.annotation_frame()
        if not set(keys) <= set(old.columns):
            return
        merged = self._table[keys].merge(old, on=keys, how="left")["class"]
        self._table[ANNOTATION] = merged.fillna("").to_numpy(dtype=object)

    def set_classes(self, colours: dict, *, renamed: dict | None = None) -> None:
        """The classes and their colours (``{name: RGBA}``, in order).  ``renamed`` maps old
        names to new ones (annotations follow); annotations of classes no longer defined are
        removed; predictions of another set of classes are dropped (train again)."""
        colours = {str(k): np.asarray(v, float) for k, v in colours.items()}
        ann = self.annotations.copy()
        for old, new in (renamed or {}).items():
            ann[ann == old] = new
        ann[~np.isin(ann, [*colours, ""])] = ""
        table = self._table.assign(**{ANNOTATION: ann})
        if list(colours) != list(self.class_colours) or renamed:
            table = _without_predictions(table)
        self.class_colours = colours
        self._table = table
        self.events.classes()

    def annotate_rows(self, rows: Iterable[int], name: str | None) -> None:
        """Annotate ``rows`` with class ``name`` (None or ``""``: remove their annotation)."""
        name = "" if name is None else str(name)
        if name and name not in self.class_colours:
            raise ValueError(f"no class {name!r}: add it first")
        ann = self.annotations.copy()
        ann[np.asarray(list(rows), dtype=np.int64)] = name
        self._table = self._table.assign(**{ANNOTATION: ann})
        self.events.classes()

    def set_predictions(self, predictions: pd.DataFrame | None) -> None:
        """The classifier's predictions of every row (``SegmentClassifier.predict`` of this
        table, same row order) into ``class_predicted``, ``class_probability``,
        ``class_margin`` and ``prob_<class>``; None drops them."""
        table = _without_predictions(self._table)
        if predictions is not None:
            if len(predictions) != len(table):
                raise ValueError(f"{len(predictions)} predictions for {len(table)} rows")
            table = table.assign(**prediction_columns(predictions))
        self._table = table
        self.events.classes()

    # ------------------------------------------------------------------ export
    def export_frame(self) -> pd.DataFrame:
        """label, geometry, map_0, map_1, map_method, cluster, emb_*."""
        from ..analysis.tables import export_frame

        return export_frame(self._table, self.coords, map_method=self.map_method)

    def provenance(self) -> dict:
        """The exported table's JSON sidecar: the same keys as the CLI's, plus the layers (and
        for 3D objects ``layout``: axes, spacing and its source)."""
        from ..analysis.export import provenance

        run, layer = self.run, self.labels_layer
        inputs = {"labels_layer": layer.name if layer is not None else None}
        inputs["image_layers"] = run.image_layers
        extra = {"layout": run.layout.describe()} if run.layout.is_volume else {}
        return provenance(
            command="napari: Embed segments, Export CSV",
            encoder_config=run.encoder.record(),
            n_segments=len(self._table),
            normalization=run.normalization,
            crop_size=run.params["crop_size"],
            batch_size=run.params["batch_size"],
            channel_axis=run.params["channel_axis"],
            device=run.params["device"],
            inputs=inputs,
            checkpoint=run.checkpoint,
            model=run.model,
            map_method=self.map_method,
            image_shape=list(run.image.shape),
            image_dtype=str(run.image.dtype),
            **inputs,
            **extra,  # a volume's axes and voxel spacing, and where the spacing came from
        )

    def close(self) -> None:
        """Drop these results: views detach (the layers stay as they are)."""
        layer = self.labels_layer
        if layer is not None and _by_layer.get(layer) is self:
            del _by_layer[layer]
        self.events.closed()


def prediction_columns(predictions: pd.DataFrame) -> dict[str, np.ndarray]:
    """``SegmentClassifier.predict``'s columns under the table's names: ``class_predicted``,
    ``class_probability``, ``class_margin`` and every ``prob_<class>``."""
    values = {
        "class_predicted": predictions["class"].to_numpy(dtype=object),
        "class_probability": predictions["probability"].to_numpy(float),
        "class_margin": predictions["margin"].to_numpy(float),
    }
    for column in predictions.columns:
        if str(column).startswith("prob_"):
            values[column] = predictions[column].to_numpy(float)
    return values


def with_classes(colours: dict, names) -> dict:
    """``colours`` (class -> RGBA) with every class of ``names`` it lacks added, in the next
    palette colours; the classes already there keep theirs."""
    out = dict(colours)
    for name in names:
        if name not in out:
            out[name] = PALETTE[len(out) % len(PALETTE)]
    return out


def _without_predictions(table: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in table.columns if c in PREDICTION_COLUMNS or str(c).startswith("prob_")]
    return table.drop(columns=drop)


def _checked_coords(coords, n: int) -> np.ndarray:
    coords = np.asarray(coords, float)
    if coords.shape != (n, 2):
        raise ValueError(f"map coordinates must be ({n}, 2), got {coords.shape}")
    return coords
