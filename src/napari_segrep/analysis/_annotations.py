"""Which rows of an embedding table the annotations name, and how to name rows in messages."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["annotated_rows", "describe_rows", "embedding_columns", "segment_keys"]

_MAX_LISTED = 5


def segment_keys(table) -> list[str]:
    """The columns that identify a segment in ``table``: ``image`` and ``frame`` where the
    table has them (several images, or a stack's planes), then ``label``."""
    return [c for c in ("image", "frame") if c in table.columns] + ["label"]


def embedding_columns(table) -> list[str]:
    cols = [c for c in table.columns if isinstance(c, str) and c.startswith("emb_")]
    return sorted(cols, key=lambda c: int(c[4:]) if c[4:].isdigit() else -1)


def describe_rows(table, mask: np.ndarray) -> str:
    """``label 3, label 7, ...`` (with the image when there is one) for the rows in ``mask``."""
    sub = table[mask]
    names = []
    keys = segment_keys(sub)
    for values in sub[keys].head(_MAX_LISTED).itertuples(index=False):
        names.append(" ".join(f"{key} {value}" for key, value in zip(keys, values, strict=True)))
    more = f" and {len(sub) - _MAX_LISTED} more" if len(sub) > _MAX_LISTED else ""
    return ", ".join(names) + more


def annotated_rows(table, annotations) -> tuple[np.ndarray, list[str]]:
    """Row positions in ``table`` of the annotated segments, and their class names."""
    import pandas as pd

    if "label" not in table.columns:
        raise ValueError("the table has no 'label' column: pass a table from embed_segments")
    keys = segment_keys(table)
    several = " and ".join(keys[:-1])
    if isinstance(annotations, pd.DataFrame):
        for col in (*keys, "class"):
            if col not in annotations.columns:
                raise ValueError(
                    f"the annotations have no {col!r} column: they need {', '.join(keys)} "
                    "and class" + (f" (the table holds several {several}s)" if several else "")
                )
        ann = annotations.dropna(subset=["class"])[[*keys, "class"]]
    elif isinstance(annotations, Mapping):
        if several:
            raise ValueError(
                f"the table holds several {several}s (its {several!r} column), so a label "
                f"number alone does not say which segment: give the annotations as a "
                f"DataFrame with {', '.join(keys)} and class"
            )
        ann = pd.DataFrame({"label": list(annotations), "class": list(annotations.values())})
        ann = ann.dropna(subset=["class"])
    else:
        raise TypeError(
            "annotations must be a mapping {label: class} or a DataFrame with label and class"
        )
    ann = ann.assign(label=ann["label"].astype(np.int64), **{"class": ann["class"].astype(str)})
    if ann.duplicated(keys).any():
        dup = ann[ann.duplicated(keys, keep=False)]
        conflicting = dup.groupby(keys)["class"].nunique()
        if (conflicting > 1).any():
            raise ValueError(
                f"some segments are annotated with two classes: "
                f"{', '.join(map(str, conflicting[conflicting > 1].index[:_MAX_LISTED]))}"
            )
        ann = ann.drop_duplicates(keys)
    index = pd.MultiIndex.from_frame(table[keys].astype({"label": np.int64}))
    if index.has_duplicates:
        raise ValueError(
            "the table has repeated labels: tables of several images, concatenated, need an "
            "'image' column naming each row's image"
        )
    wanted = pd.MultiIndex.from_frame(ann[keys])
    position = index.get_indexer(wanted)
    if (position < 0).any():
        unknown = [str(k[-1] if len(keys) == 1 else k) for k in wanted[position < 0]]
        more = f" and {len(unknown) - _MAX_LISTED} more" if len(unknown) > _MAX_LISTED else ""
        raise ValueError(
            f"{len(unknown)} annotated segment(s) are not in the table (label "
            f"{', '.join(unknown[:_MAX_LISTED])}{more}): embed them first, or remove those "
            "annotations"
        )
    return position, list(ann["class"])
