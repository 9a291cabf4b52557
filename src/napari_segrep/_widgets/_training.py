"""What the Classify segments widget trains on, and the training itself (run in its worker):
the annotated segments of the followed labels layer, plus those of the layers annotated before
in this widget whose embeddings come from the same encoder ("image after image": annotate one
image, move to the next, and the model keeps what it learnt from the first)."""

from __future__ import annotations

import pandas as pd

from ._apply import with_measurements
from ._results import SegmentResults

__all__ = ["NOT_EMBEDDED", "annotated_examples", "fit_and_predict", "training_layers"]

#: The features that read the measurement columns (``auto`` chooses among them too): the rows
#: are measured first.
MEASURED_FEATURES = ("embedding+geometry", "measurements", "auto")

NOT_EMBEDDED = "Embed this layer first (Embed segments), then click segments to annotate them."


def annotated_examples(results: SegmentResults, rows: pd.DataFrame):
    """The annotated rows of ``rows`` (the results' table, measured or not) and their
    annotations: what is remembered of a layer once another one is followed."""
    keep = results.annotations != ""
    examples = rows[keep].reset_index(drop=True)
    examples.attrs = dict(rows.attrs)
    return examples, results.annotation_frame()


def training_layers(results: SegmentResults | None, remembered: dict, *, features: str):
    """``(layers, None)``: ``(table, annotations, run, name)`` of the followed layer first,
    then of the remembered layers (``{name: (examples, annotations)}``, ``run`` None) of the
    same encoder (and measured, for the features in :data:`MEASURED_FEATURES`); or ``(None, why)``."""
    from ..analysis.measure import has_measurements

    if results is None:
        return None, NOT_EMBEDDED
    name = results.labels_layer.name if results.labels_layer is not None else ""
    sha = results.table.attrs.get("encoder", {}).get("sha256")
    layers = [(results.table, results.annotation_frame(), results.run, name)]
    for other, (examples, clicks) in remembered.items():
        same = sha is not None and examples.attrs.get("encoder", {}).get("sha256") == sha
        measured = features not in MEASURED_FEATURES or has_measurements(examples)
        if other != name and same and measured and len(clicks):
            layers.append((examples, clicks, None, other))
    counts = pd.concat([ann["class"] for _, ann, _, _ in layers]).value_counts()
    if (counts >= 2).sum() < 2:
        return None, "Annotate at least 2 segments of each of 2 classes to train."
    return layers, None


def fit_and_predict(layers, *, method: str, features: str, cached=None):
    """Train on every layer's annotations (one table with an ``image`` column, the layer's
    name, when there are several) and predict the first layer's segments:
    ``(model, predictions, its rows)`` (the rows with their measurements, when measured;
    ``cached``: the first layer's measurement columns, computed before)."""
    from ..analysis.classify import train_classifier

    rows, clicks, run, _ = layers[0]
    if features in MEASURED_FEATURES:
        rows = with_measurements(rows, run.image, run.labels, run.params, cached)
    if len(layers) == 1:
        training = rows
    else:
        tables = [rows] + [t for t, _, _, _ in layers[1:]]
        names = [name for _, _, _, name in layers]
        columns = list(rows.columns)
        training = pd.concat(
            [
                t.reindex(columns=columns).assign(image=n)
                for t, n in zip(tables, names, strict=True)
            ],
            ignore_index=True,
        )
        training.attrs = dict(rows.attrs)  # one encoder: its record
        clicks = pd.concat(
            [a.assign(image=n) for (_, a, _, _), n in zip(layers, names, strict=True)]
        )
    model = train_classifier(training, clicks, method=method, features=features)
    model.info["layers"] = {name: int(len(a)) for _, a, _, name in layers}
    return model, model.predict(rows, force=True), rows
