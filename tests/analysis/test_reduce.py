"""Maps (index-aligned, NaN-safe, new rows placed by transform) and neighbourhood measures."""

from __future__ import annotations

import numpy as np
import pytest

from napari_segrep.analysis.reduce import (
    nearest_neighbour_class_agreement,
    neighbour_agreement,
    pca_map,
    umap_map,
)

from .conftest import blobs


def test_pca_map__aligned_nan_safe_and_transforms_new_rows():
    emb, truth = blobs()
    emb[5] = np.nan
    m = pca_map(emb)
    assert m.coords.shape == (90, 2) and np.isnan(m.coords[5]).all()
    assert np.isfinite(np.delete(m.coords, 5, axis=0)).all()
    np.testing.assert_allclose(m.transform(emb[:4]), m.coords[:4], atol=1e-9)
    assert np.isnan(m.transform(emb[5:6])).all()


def test_umap_map__separates_blobs_and_places_new_points_near_their_kin():
    emb, truth = blobs()
    m = umap_map(emb, seed=0)
    assert m.method == "umap" and m.coords.shape == (90, 2)
    centroids = np.stack([m.coords[truth == c].mean(0) for c in range(3)])
    new = m.transform(emb[:3] + 0.01)
    nearest = np.argmin(((new[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (nearest == 0).all()
    assert umap_map(emb[:3]).method == "pca"  # too few rows for UMAP


def test_neighbour_agreement__same_map_is_one_and_shuffled_map_is_near_chance():
    emb, _ = blobs(n_per=40, d=2)
    assert neighbour_agreement(emb, emb * 3.0 + 1.0, k=5) == 1.0  # same neighbourhoods
    shuffled = emb[np.random.default_rng(1).permutation(len(emb))]
    assert neighbour_agreement(emb, shuffled, k=5) < 0.2
    with pytest.raises(ValueError, match="same rows"):
        neighbour_agreement(emb, emb[:-1])


def test_nearest_neighbour_class_agreement__matches_a_hand_count():
    # nearest neighbours: 0 <-> 1, 2 <-> 3
    emb = np.array([[0.0], [1.0], [10.0], [12.0]])
    assert nearest_neighbour_class_agreement(emb, np.array(["a", "a", "a", "b"])) == 0.5
    assert nearest_neighbour_class_agreement(emb, np.array([1, 1, 2, 2])) == 1.0
    assert nearest_neighbour_class_agreement(emb, np.array([1, 2, 1, 2])) == 0.0
    assert nearest_neighbour_class_agreement(emb.astype(int), np.array([1, 1, 2, 2])) == 1.0


def test_nearest_neighbour_class_agreement__separated_classes_agree_and_random_ones_do_not():
    emb, truth = blobs()
    assert nearest_neighbour_class_agreement(emb, truth) == 1.0
    assert nearest_neighbour_class_agreement(emb.astype(np.float32), truth) == 1.0
    random_classes = np.random.default_rng(3).integers(0, 3, len(emb))
    assert nearest_neighbour_class_agreement(emb, random_classes) < 0.6  # chance ~1/3


def test_nearest_neighbour_class_agreement__standardises_columns():
    """A column with a huge scale but no information must not decide the neighbours."""
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1], 20)
    informative = classes * 10.0 + rng.normal(0, 0.1, 40)
    noise = rng.normal(0, 1e6, 40)
    emb = np.stack([informative, noise], axis=1)
    raw = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    np.fill_diagonal(raw, np.inf)
    raw_nn = raw.argmin(1)
    assert (classes[raw_nn] == classes).mean() < 0.9  # unstandardised, the noise decides
    assert nearest_neighbour_class_agreement(emb, classes) > 0.9


def test_nearest_neighbour_class_agreement__bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        nearest_neighbour_class_agreement(np.zeros((1, 4)), np.array([0]))
    with pytest.raises(ValueError, match="one class per row"):
        nearest_neighbour_class_agreement(np.zeros((3, 4)), np.array([0, 1]))
