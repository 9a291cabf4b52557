"""Embed segments with several (image, labels) pairs: the extra rows, Folder..., the run.

The first pair is the widget's own image and labels choice; :class:`MultiPairs` adds rows of
pairs (as in Train SegRep) and opens the pairs of a folder as layers.  With more than one
pair, Run embeds each pair alone (one encoder, the same settings:
:func:`~._group.embed_pairs_run`), gives each labels layer its own
:class:`~._results.SegmentResults`, and ties them into a :class:`~._group.ResultsGroup` with
one map of all rows, drawn by a :class:`~._group_view.GroupMapView`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import ComboBox, Container, PushButton
from napari.utils.notifications import show_info

from ._common import LayerInputs, folder_pairs, image_layers, labels_layers, layer_inputs
from ._group import MapPart, ResultsGroup, embed_pairs_run
from ._group_view import GroupMapView
from ._layer_axes import LayerAxesUnknown
from ._results import SegmentResults, results_for

__all__ = ["MAX_FOLDER_PAIRS", "MultiPairs", "image_name", "same_layer"]

#: A folder opens at most this many pairs as layers (each is an image and a labels layer).
MAX_FOLDER_PAIRS = 24
#: The labels layer's metadata key naming its image in the table (the file stem for a folder).
IMAGE_NAME_KEY = "segrep_image_name"


def image_name(labels_layer) -> str:
    """The ``image`` column's value for a labels layer: the file stem of a folder pair, else
    the layer's name."""
    return str(labels_layer.metadata.get(IMAGE_NAME_KEY, labels_layer.name))


def same_layer(a, b) -> bool:
    """Whether ``a`` and ``b`` are one layer (napari may hand plugins proxies of layers)."""
    return a is b or (a is not None and b is not None and a.unique_id == b.unique_id)


def _channels(inputs: LayerInputs) -> int:
    layers = inputs.image_layers
    if len(layers) > 1:
        return len(layers)
    return int(np.shape(layers[0].data)[-1]) if layers[0].rgb else 1


class _PairRow(Container):
    def __init__(self, owner: MultiPairs) -> None:
        super().__init__(layout="horizontal", labels=False)
        viewer = owner.widget.viewer
        self.image = ComboBox(choices=lambda _w=None: image_layers(viewer), tooltip="image layer")
        self.labels = ComboBox(
            choices=lambda _w=None: labels_layers(viewer), tooltip="labels layer"
        )
        self.remove = PushButton(text="-", tooltip="remove this pair")
        self.extend([self.image, self.labels, self.remove])
        self.remove.changed.connect(lambda: owner.remove_pair(self))
        self.image.changed.connect(owner.widget._update_run_state)
        self.labels.changed.connect(owner.widget._update_run_state)


class MultiPairs:
    """The extra pairs of an :class:`~.embed.EmbedSegmentsWidget` and their run; ``group``:
    the results shown (None with one pair)."""

    def __init__(self, widget) -> None:
        self.widget = widget
        self.group: ResultsGroup | None = None
        self.view = GroupMapView(widget.viewer)
        self.rows = Container(labels=False, label="more pairs")
        self.add_button = PushButton(text="+ add an (image, labels) pair")
        self.folder_button = PushButton(
            text="Folder...",
            tooltip="images/ + labels/, or x.tif "
            "beside x_labels.tif: each pair opens as two layers",
        )
        self.add_button.changed.connect(lambda: self.add_pair())
        self.folder_button.changed.connect(lambda: self._choose_folder())

    @property
    def widgets(self) -> list:
        return [self.rows, self.add_button, self.folder_button]

    # ------------------------------------------------------------------ rows
    def add_pair(self, image=None, labels=None) -> _PairRow:
        """A row for one more pair (its layers, when given)."""
        row = _PairRow(self)
        self.rows.append(row)
        if image is not None:
            row.image.value = image
        if labels is not None:
            row.labels.value = labels
        self.widget._update_run_state()
        return row

    def remove_pair(self, row: _PairRow) -> None:
        self.rows.remove(row)
        self.widget._update_run_state()

    def pairs(self, *, build: bool) -> list[LayerInputs]:
        """Every pair's inputs, the widget's own first; a labels layer chosen twice counts
        once.  ``ValueError`` with the reason when one does not fit."""
        w = self.widget
        out = [w._collect_inputs(build=build)]
        for i, row in enumerate(self.rows, start=2):
            if row.labels.value is None or any(
                same_layer(p.labels_layer, row.labels.value) for p in out
            ):
                continue
            try:
                image = [row.image.value] if row.image.value is not None else []
                out.append(layer_inputs(row.labels.value, image, build=build))
            except LayerAxesUnknown:
                raise  # names its layer: the widget asks about it
            except ValueError as exc:
                raise ValueError(f"Pair {i}: {exc}") from None
        return out

    @property
    def active(self) -> bool:
        """Whether Run embeds several pairs (rows with another labels layer than the first)."""
        first = self.widget.labels_input.value
        return any(
            r.labels.value is not None and not same_layer(r.labels.value, first) for r in self.rows
        )

    def validate(self) -> None:
        """``ValueError`` when the pairs cannot be embedded together."""
        pairs = self.pairs(build=False)
        names = [image_name(p.labels_layer) for p in pairs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"Two pairs are called {repeated[0]!r}: rename a labels layer.")
        channels = {_channels(p) for p in pairs}
        if len(channels) > 1:
            raise ValueError("The pairs' images differ in channels: one model embeds them all.")
        if len({p.layout.spatial_ndim for p in pairs}) > 1:
            raise ValueError(
                "Some pairs hold 2D objects and others 3D objects (z-stacks): one model embeds "
                "them all, so embed them apart."
            )

    # ------------------------------------------------------------------ a folder
    def _choose_folder(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.widget.native, "Folder of images, labels")
        if folder:
            self.add_folder(folder)

    def add_folder(self, folder, *, limit: int = MAX_FOLDER_PAIRS) -> list:
        """Open the pairs of ``folder`` (``images/`` + ``labels/``, or ``x.tif`` beside
        ``x_labels.tif``, paired by file stem as the CLI does) as image and labels layers and
        add them as pairs; returns their labels layers.  ``ValueError`` when nothing pairs up
        or there are more than ``limit`` pairs (embed those with ``napari-segrep embed``)."""
        from ..io import read_image

        folder = Path(folder)
        found = folder_pairs(folder)
        if len(found) > limit:
            raise ValueError(
                f"{folder.name} has {len(found)} pairs; up to {limit} open as layers here. "
                "Embed a large folder with the CLI (napari-segrep embed) or in parts."
            )
        w, viewer = self.widget, self.widget.viewer
        first_free = w.labels_input.value is None
        added = []
        for image_path, label_path in found:
            stem = image_path.stem
            image = viewer.add_image(read_image(image_path), name=stem)
            labels = viewer.add_labels(
                np.asarray(read_image(label_path)),
                name=f"{stem} labels",
                metadata={IMAGE_NAME_KEY: stem},
            )
            # the layers as the layer choices list them (napari may return proxies here)
            image = next(la for la in image_layers(viewer) if same_layer(la, image))
            labels = next(la for la in labels_layers(viewer) if same_layer(la, labels))
            added.append((image, labels))
        for i, (image, labels) in enumerate(added):
            if i == 0 and first_free:
                w.labels_input.value, w.image_input.value = labels, [image]
            else:
                self.add_pair(image, labels)
        show_info(f"{len(added)} pairs from {folder.name}")
        return [labels for _, labels in added]

    # ------------------------------------------------------------------ run and results
    def prepare(self, weights, params: dict, *, backbone=None, volume_backbone=None, **run):
        """The worker's call, what to do with its result and with its messages (which image it
        embeds), for :meth:`~.embed.EmbedSegmentsWidget.run`."""
        pairs = self.pairs(build=True)
        self.validate()
        args = [
            (p.image, p.labels.copy(), p.layout, p.channel_axis, [la.name for la in p.image_layers])
            for p in pairs  # labels copied: the user may paint while we work
        ]
        targets = [p.labels_layer for p in pairs]
        names = [image_name(layer) for layer in targets]

        def call(progress, should_stop):
            from . import _session

            _session.load_engine()
            return embed_pairs_run(
                args,
                weights,
                params,
                progress=progress,
                should_stop=should_stop,
                backbone=backbone,
                volume_backbone=volume_backbone,
                **run,
            )

        def on_message(message) -> None:
            i, n = message
            self.widget.status.value = f"Embedding {names[i]} ({i + 1} of {n} images)..."

        return call, lambda result: self._on_embedded(targets, names, *result), on_message

    def _on_embedded(self, targets, names, parts, map_model) -> None:
        w = self.widget
        if any(layer not in w.viewer.layers for layer in targets):
            w.status.value = "A labels layer was removed during the run: nothing to show."
            return
        w._drop_results()
        members, start = [], 0
        for layer, (df, setup) in zip(targets, parts, strict=True):
            coords = np.asarray(map_model.coords)[start : start + len(df)]
            start += len(df)
            previous = results_for(layer)
            members.append(
                SegmentResults(layer, df, MapPart(map_model, coords), setup, previous=previous)
            )
        self.group = ResultsGroup(members, names, map_model)
        self.group.events.closed.connect(self._on_group_closed)
        self.group.events.colour_by.connect(w._on_results_colour_by)
        self.view.attach(self.group)
        w.colour_by.reset_choices()
        w.colour_by.value = "image"
        w._show_new_results(len(map_model.coords), f" of {len(targets)} images")

    def _on_group_closed(self, event=None) -> None:
        self.group = None
        self.widget.colour_by.reset_choices()

    def drop(self) -> None:
        """Stop showing the group (each labels layer keeps its own results)."""
        group = self.group
        self.view.detach()
        if group is not None:
            group.close()
        self.group = None

    def forget_layer(self, layer) -> None:
        self.view.forget_layer(layer)
