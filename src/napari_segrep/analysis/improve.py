"""Improve a classifier with new annotations instead of starting over: a classifier keeps the
segments it was trained on (their features and classes, in its file too), and
:func:`improve_classifier` trains on those plus the new annotations, with the same method,
parameters and features."""

from __future__ import annotations

import numpy as np

from ._annotations import annotated_rows
from .classify import SegmentClassifier, train_classifier

__all__ = ["improve_classifier", "training_examples"]


def training_examples(model: SegmentClassifier):
    """The segments ``model`` was trained on, as a table (``label`` 1..n, its feature columns,
    ``attrs`` with its encoder) and their annotations (``label``, ``class``), to train again
    on them plus new annotations; None for a file written before they were kept."""
    import pandas as pd

    if "examples" not in model.arrays:
        return None
    x, y = model.arrays["examples"], model.arrays["example_classes"]
    labels = np.arange(1, len(x) + 1)
    table = pd.concat(  # one block, label first (no insert into a wide frame)
        [
            pd.DataFrame({"label": labels}),
            pd.DataFrame(x.astype(np.float64), columns=model.feature_columns),
        ],
        axis=1,
    )
    table.attrs = {k: model.info[k] for k in ("encoder", "normalization") if k in model.info}
    names = np.asarray(model.classes_, dtype=object)[y]
    return table, pd.DataFrame({"label": labels, "class": names})


def improve_classifier(model: SegmentClassifier, table, annotations) -> SegmentClassifier:
    """A classifier trained on what ``model`` was trained on plus ``annotations`` of the
    segments of ``table`` (as for :func:`train_classifier`), with ``model``'s method,
    parameters, features and seed (for one trained with ``features="auto"``, the features it
    chose: its training examples hold only those columns).

    Raises
    ------
    ValueError
        ``model`` does not keep its training examples (a file from an older version); the
        table comes from another encoder (the two sets of embeddings cannot be mixed), or
        lacks ``model``'s feature columns; bad annotations (as :func:`train_classifier`).
    """
    import pandas as pd

    found = training_examples(model)
    if found is None:
        raise ValueError(
            "this classifier does not keep the segments it was trained on (written by an "
            "older napari-segrep): train a new one on the annotations"
        )
    examples, classes = found
    model.check_encoder(table)  # never mixes two encoders' embeddings
    missing = [c for c in model.feature_columns if c not in table.columns]
    if missing:
        raise ValueError(
            f"the table lacks the classifier's feature columns {', '.join(missing[:5])}"
            + (" and more" if len(missing) > 5 else "")
            + ": embed (and measure) the segments as for the classifier's training"
        )
    rows, names = annotated_rows(table, annotations)
    new = table.iloc[rows][model.feature_columns]
    features = pd.concat([examples[model.feature_columns], new], ignore_index=True)
    labels = pd.DataFrame({"label": np.arange(1, len(features) + 1)})
    combined = pd.concat([labels, features], axis=1)
    combined.attrs = dict(getattr(table, "attrs", {})) or dict(examples.attrs)
    labels = dict(zip(combined["label"], [*classes["class"], *names], strict=True))
    info = model.info
    return train_classifier(
        combined,
        labels,
        method=model.method,
        features=info.get("features", "embedding"),
        seed=int(info.get("seed", 0)),
        **{k: v for k, v in model.params.items() if k in ("C", "k", "n_trees")},
    )
