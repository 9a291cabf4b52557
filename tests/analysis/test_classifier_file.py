"""The classifier file (``.segclf``) checked against its method's schema before use: a damaged
or crafted file is one ``ValueError`` naming the file and what is wrong, never a raw
traceback, a hang, a NaN probability or gigabytes of memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_segrep.analysis.classify import (
    METHODS,
    SegmentClassifier,
    load_classifier,
    train_classifier,
)

from .conftest import blobs

D = 4  # embedding dimensions of the small classifiers


def _table(n_per=6, seed=0, classes=3) -> tuple[pd.DataFrame, dict]:
    """A small embedding table (label, area, emb_0..emb_3) and annotations of every row; the
    classes differ in size, so every method keeps the size column (log area)."""
    emb, truth = blobs(n_per=n_per, d=D, seed=seed)
    keep = truth < classes
    emb, truth = emb[keep], truth[keep]
    area = np.array([30, 120, 400])[truth] * np.random.default_rng(seed).uniform(0.9, 1.1, len(emb))
    table = pd.concat(
        [
            pd.DataFrame({"label": np.arange(1, len(emb) + 1), "area": area}),
            pd.DataFrame(emb, columns=[f"emb_{i}" for i in range(D)]),
        ],
        axis=1,
    )
    names = np.array(["round", "long", "spotty"])
    return table, dict(zip(table["label"], names[truth], strict=True))


@pytest.fixture(scope="module")
def saved():
    """``(table, {name: file contents})``: one valid classifier file per method (and a
    two-class logistic one, whose coefficients have one row), as (record, arrays)."""
    table, annotations = _table()
    two = {k: v for k, v in annotations.items() if v != "spotty"}
    models = {m: train_classifier(table, annotations, method=m, n_trees=3) for m in METHODS}
    models["logistic2"] = train_classifier(table, two)
    return table, {name: _contents(model.to_bytes()) for name, model in models.items()}


def _contents(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        arrays = {k.removeprefix("array_"): archive[k] for k in archive.files if k != "meta"}
        record = json.loads(archive["meta"].tobytes().decode())
    return record, arrays


def _write(path, record, arrays: dict, *, raw_meta: bytes | None = None) -> None:
    """A classifier file as ``save`` writes it, from (possibly broken) contents."""
    meta = raw_meta if raw_meta is not None else json.dumps(record).encode()
    payload = {f"array_{k}": v for k, v in arrays.items()}
    payload["meta"] = np.frombuffer(meta, np.uint8)
    with open(path, "wb") as fh:  # (a path not ending in .npz would get one)
        np.savez_compressed(fh, **payload)  # object arrays are pickled here: must be refused


def _copy(contents):
    record, arrays = contents
    return json.loads(json.dumps(record)), {k: v.copy() for k, v in arrays.items()}


def _check_outcome(path, table) -> None:
    """The property every file must have: a clean load that predicts finite probabilities
    summing to 1, or a ValueError naming the file (never another exception)."""
    try:
        model = load_classifier(path)
    except ValueError as exc:
        assert str(path) in str(exc), exc
        assert "\n" not in str(exc)
        return
    try:
        proba = model.predict_proba(table, force=True)
    except ValueError:  # a clean refusal of this table (another size of embeddings...)
        return
    assert proba.shape == (len(table), len(model.classes_))
    assert np.isfinite(proba).all() and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    model.predict(table, force=True)  # and the table of predictions builds


def _cycle(contents):
    record, arrays = contents
    inner = int(np.flatnonzero(arrays["tree_left"] != -1)[0])
    arrays["tree_left"][inner] = inner  # the node is its own child
    return record, arrays


def _empty_offsets(contents):
    record, arrays = contents
    arrays["tree_offsets"] = np.array([0, 0, 0, len(arrays["tree_left"])])
    return record, arrays


def _two_classes(contents):
    record, arrays = contents
    record["classes"] = ["long", "round"]  # the coefficients have 3 rows, for 3 classes
    record["info"]["n_annotations"] = {"long": 6, "round": 6}
    return record, arrays


def _set(field, value):
    def mutate(contents):
        record, arrays = contents
        *parents, last = field.split(".")
        target = record
        for key in parents:
            target = target[key]
        target[last] = value
        return record, arrays

    return mutate


def _array(name, make):
    def mutate(contents):
        record, arrays = contents
        arrays[name] = make(arrays[name])
        return record, arrays

    return mutate


# The defects the attack found (issue 22, item 6), one line each naming what is wrong.
DEFECTS = {
    "all-zero scale": ("logistic", _array("scale", np.zeros_like), "scale is not positive"),
    "forest with empty trees": ("random_forest", _empty_offsets, "each tree has at least one"),
    "a node that is its own child": ("random_forest", _cycle, "a cycle"),
    "complex scale": ("logistic", _array("scale", lambda a: a + 0j), "complex"),
    "duplicate class names": ("logistic", _set("classes", ["a", "a", "b"]), "repeats 'a'"),
    "cv_score as text": ("logistic", _set("cv_score", "high"), "cv_score 'high'"),
    "cv_score NaN": ("logistic", _set("cv_score", float("nan")), "cv_score nan"),
    "cv_score above 1": ("knn", _set("cv_score", 3), "cv_score 3"),
    "k = 0": ("knn", _set("params.k", 0), "k=0"),
    "k as text": ("knn", _set("params.k", "5"), "k='5'"),
    "no n_trees": ("random_forest", _set("params", {}), "needs the parameter 'n_trees'"),
    "n_trees not the trees": ("random_forest", _set("params.n_trees", 4), "axis 0 should be 5"),
    "two class names for three": ("logistic", _two_classes, "coef has shape (3, 5)"),
    "coefficients of other features": (
        "logistic",
        _array("coef", lambda a: a[:, :2]),
        "coef has shape",
    ),
    "classes not a list": ("knn", _set("classes", "ab"), "classes must be a list"),
    "feature columns of numbers": ("knn", _set("feature_columns", [1, 2]), "feature_columns"),
    "a feature index beyond the features": (
        "random_forest",
        _array("tree_feature", lambda a: np.where(a >= 0, 99, a)),
        "tree_feature holds feature indices",
    ),
    "a child outside its tree": (
        "random_forest",
        _array("tree_right", lambda a: np.where(a > 0, 10**6, a)),
        "outside its tree",
    ),
    "leaves that are not probabilities": (
        "random_forest",
        _array("tree_value", lambda a: a * 3),
        "summing to 1",
    ),
    "a class id beyond the classes": (
        "knn",
        _array("train_y", lambda a: a + 7),
        "class ids outside",
    ),
    "an object array (a pickle)": (
        "knn",
        _array("train_y", lambda a: a.astype(object)),
        "Python objects",
    ),
    "booleans for class ids": ("knn", _array("train_y", lambda a: a > 0), "integer numbers"),
    "integers for the mean": ("logistic", _array("mean", lambda a: a.astype(int)), "floating"),
    "infinite coefficients": (
        "logistic",
        _array("coef", lambda a: np.full_like(a, np.inf)),
        "NaN or infinite",
    ),
    "params a list": ("logistic", _set("params", [1]), "params must be a JSON object"),
    "info a list": ("logistic", _set("info", [1]), "info must be a JSON object"),
    "encoder a text": ("logistic", _set("info.encoder", "resnet"), "info.encoder"),
    "n_annotations of numbers": ("logistic", _set("info.n_annotations", [3]), "n_annotations"),
    "a seed beyond 2^32": ("logistic", _set("info.seed", 2**40), "info.seed"),
    "a crop size of null": ("logistic", _set("info.crop_size", None), "info.crop_size None"),
    "a normalisation of text": ("knn", _set("info.normalization", "image"), "normalization"),
    "fixed values that are not numbers": (
        "knn",
        _set("info.normalization", {"mode": "fixed", "low": ["a"], "high": [1]}),
        "fixed values need low and high",
    ),
    "layers of text": ("logistic", _set("info.layers", {"cells": "9"}), "info.layers"),
    "unknown method": ("logistic", _set("method", "svm"), "unknown classifier method 'svm'"),
    "a format version of text": ("logistic", _set("format.version", "1"), "format version"),
    "a newer format": ("logistic", _set("format.version", 99), "newer napari-segrep"),
    "an unexpected array": (
        "logistic",
        lambda c: (c[0], {**c[1], "payload": np.zeros(3)}),
        "unexpected array(s) payload",
    ),
    "features auto recorded (not the features chosen)": (
        "logistic",
        _set("info.features", "auto"),
        "info.features 'auto' is not one of",
    ),
    "features_cv of text": ("knn", _set("info.features_cv", {"embedding": "1"}), "features_cv"),
    "measurements alone reading embeddings": (
        "logistic",
        _set("info.features", "measurements"),
        'but info.features is "measurements"',
    ),
    "log of an embedding column": (
        "logistic",
        _set("log_columns", ["emb_0"]),
        "log_columns must name measurement columns",
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_load_classifier__each_defect_is_one_error_naming_the_file(saved, tmp_path, defect):
    table, files = saved
    method, mutate, message = DEFECTS[defect]
    record, arrays = mutate(_copy(files[method]))
    path = tmp_path / "bad.segclf"
    _write(path, record, arrays)
    with pytest.raises(ValueError) as caught:
        load_classifier(path)
    text = str(caught.value)
    assert text.startswith(f"{path}"), text
    assert message in text, text
    assert "\n" not in text


def test_load_classifier__a_valid_file_of_each_method_loads_and_predicts(saved, tmp_path):
    table, files = saved
    for name, (record, arrays) in files.items():
        path = tmp_path / f"{name}.segclf"
        _write(path, record, arrays)
        model = load_classifier(path)
        assert isinstance(model, SegmentClassifier) and model.log_columns == ["area"]
        _check_outcome(path, table)


def _zip_member_header_only(path, name: str, shape, dtype="<f8", extra: dict | None = None):
    """A zip whose member ``name`` declares ``shape`` in its .npy header but holds only a few
    bytes of data (a header check must refuse it before reading)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "a" if path.exists() else "w") as archive:
        archive.writestr(f"{name}.npy", header.getvalue() + bytes(64))


def test_load_classifier__sizes_declared_beyond_the_limit_are_refused_before_reading(
    saved, tmp_path
):
    table, files = saved
    record, arrays = _copy(files["knn"])
    path = tmp_path / "bomb.segclf"
    _write(path, record, {k: v for k, v in arrays.items() if k != "train_z"})
    _zip_member_header_only(path, "array_train_z", (402_653_184, D))  # 12 GiB of float64
    with pytest.raises(ValueError, match="declare more than 2 GiB .*refused before reading"):
        load_classifier(path)


BOMB = """
import sys
from napari_segrep.analysis.classify import load_classifier
path = sys.argv[1]
try:
    load_classifier(path)
    print("loaded")
except ValueError as exc:
    print("refused:", exc)
with open("/proc/self/status") as fh:  # this process's peak RSS (ru_maxrss counts the parent's)
    peak = next(line for line in fh if line.startswith("VmHWM:"))
print(int(peak.split()[1]) // 1024)  # MiB
"""


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/status: Linux")
def test_load_classifier__a_small_file_of_zeros_costs_no_memory(saved, tmp_path):
    """1 MiB of compressed zeros that inflate to 256 MiB, in an array whose header does not fit
    the schema: refused from its header, in a process that stays under 128 MiB (about 30 MiB:
    Python and numpy; the old reader inflated it all, then predicted with it)."""
    _, files = saved
    record, arrays = _copy(files["logistic"])
    path = tmp_path / "zeros.segclf"
    _write(path, record, {k: v for k, v in arrays.items() if k != "mean"})
    header = io.BytesIO()
    count = 2**25  # float64: 256 MiB
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (count,)}
    )
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("array_mean.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            chunk = bytes(2**24)
            for _ in range(count * 8 // len(chunk)):
                fh.write(chunk)
    assert path.stat().st_size < 2 * 2**20
    done = subprocess.run(
        [sys.executable, "-c", BOMB, str(path)], capture_output=True, text=True, check=True
    )
    first, peak = done.stdout.strip().splitlines()
    assert first.startswith(f"refused: {path}: mean has shape ({count},)"), done.stdout
    assert int(peak) < 128, f"peak RSS {peak} MiB"


def test_load_classifier__not_an_archive_of_ours_is_named(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))  # an .npy, not an archive
    (tmp_path / "text.segclf").write_text("hello")
    (tmp_path / "folder.segclf").mkdir()
    np.savez(tmp_path / "other.npz", meta=np.frombuffer(b'{"format": 1}', np.uint8))
    np.savez(tmp_path / "list.npz", meta=np.frombuffer(b"[" * 100_000, np.uint8))
    names = ["plain.npy", "text.segclf", "folder.segclf", "other.npz", "list.npz"]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.segclf")  # opening it to read would wait for a writer
        names.append("pipe.segclf")
    for name in names:
        with pytest.raises(ValueError, match="not a napari-segrep classifier") as caught:
            load_classifier(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)


def test_load_classifier__a_format_1_file_still_loads_and_predicts_the_same(saved, tmp_path):
    """Files written before the size column (format 1: no log_columns) read as they were."""
    table, annotations = _table()
    model = train_classifier(table, annotations, size=False)
    record, arrays = _contents(model.to_bytes())
    record["format"]["version"] = 1
    del record["log_columns"]
    _write(tmp_path / "old.segclf", record, arrays)
    old = load_classifier(tmp_path / "old.segclf")
    assert old.log_columns == [] and old.feature_columns == [f"emb_{i}" for i in range(D)]
    np.testing.assert_array_equal(old.predict_proba(table), model.predict_proba(table))


# ---------------------------------------------------------------------- the property
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=8,
)
DTYPES = st.sampled_from(
    ["f8", "f4", "f2", "i8", "i4", "u1", "u8", "?", "c16", ">f8", "O", "f8,i4", "S3"]
)
SPECIAL = st.sampled_from(
    [np.nan, np.inf, -np.inf, -1, 0, 1, 2, 3, -2, 10**6, 2**62, -(2**63), 1e300, -1e-320]
)


@st.composite
def mutations(draw, files):
    """A valid file's contents with one (or a few) fields or arrays changed."""
    name = draw(st.sampled_from(sorted(files)))
    record, arrays = _copy(files[name])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "nested", "delete", "array", "element", "drop"]))
        if kind == "field":
            record[draw(st.sampled_from(sorted(record) + ["extra"]))] = draw(JSON)
        elif kind == "nested":
            parent = draw(st.sampled_from(["params", "info", "format"]))
            if isinstance(record.get(parent), dict):
                keys = sorted(record[parent]) + ["k", "n_trees", "C", "seed", "encoder"]
                record[parent][draw(st.sampled_from(keys))] = draw(JSON)
        elif kind == "delete" and record:
            record.pop(draw(st.sampled_from(sorted(record))))
        elif kind == "array":
            key = draw(st.sampled_from(sorted(arrays) + ["extra"]))
            dtype = np.dtype(draw(DTYPES))
            old = arrays.get(key, np.zeros(3))
            shape = draw(
                st.sampled_from([old.shape, old.shape[:1], (0,), (2, 2), old.shape + (1,)])
            )
            if dtype.kind == "O":
                arrays[key] = np.empty(shape, object)
            else:
                fill = draw(SPECIAL) if dtype.kind in "fc" else draw(st.integers(-3, 3))
                arrays[key] = np.full(shape, 0, dtype)
                if arrays[key].size and dtype.names is None and dtype.kind != "S":
                    with np.errstate(all="ignore"):
                        try:
                            arrays[key].flat[0] = fill
                        except (OverflowError, ValueError, TypeError):
                            pass
        elif kind == "element":
            key = draw(st.sampled_from(sorted(arrays)))
            if arrays[key].size:
                flat = arrays[key].reshape(-1)
                i = draw(st.integers(0, flat.size - 1))
                value = draw(SPECIAL | st.integers(-3, flat.size + 3))
                with np.errstate(all="ignore"):
                    try:
                        flat[i] = value
                    except (OverflowError, ValueError):  # NaN into integers, -3 into uint8
                        try:
                            flat[i] = np.array(-1).astype(flat.dtype)  # wraps where unsigned
                        except (OverflowError, ValueError, TypeError):
                            pass
        elif kind == "drop" and arrays:
            arrays.pop(draw(st.sampled_from(sorted(arrays))))
    return record, arrays


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_load_classifier__any_damage_loads_cleanly_or_is_named(saved, tmp_path_factory, data):
    """Mutate a valid file's fields and arrays: either it loads and predicts finite
    probabilities that sum to 1, or a ValueError names the file; nothing else, no hang."""
    table, files = saved
    record, arrays = data.draw(mutations(files))
    path = tmp_path_factory.getbasetemp() / "mutated.segclf"
    _write(path, record, arrays)
    _check_outcome(path, table)


def test_classifier__probabilities_that_overflow_are_refused_not_written(saved):
    """A valid model (one embedding dimension nearly constant in the annotated rows: a tiny
    scale) and a table with a value far beyond its training range: the logits overflow; the
    rows are named, no NaN probability comes back."""
    table, annotations = _table()
    table["emb_3"] = 5.0 + np.random.default_rng(0).normal(0, 1e-11, len(table))
    model = train_classifier(table, annotations, size=False)
    far = table.copy()
    far.loc[far.index[2], "emb_3"] = 1e300
    with pytest.raises(ValueError, match="1 row\\(s\\) get no finite probabilities \\(label 3\\)"):
        model.predict(far)
