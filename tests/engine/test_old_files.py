"""Files written before the backbone catalogue and the ViTs (at 9f0940a, by that version's
``save_encoder`` and ``write_table``) load unchanged: the same encoder (fingerprint), the same
table, the same embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.draw import ellipse

import napari_segrep as sr
from napari_segrep.analysis.export import read_table

DATA = Path(__file__).resolve().parents[1] / "data"


def _inputs():
    """The image and labels the old table was embedded from (generated the same way)."""
    labels = np.zeros((96, 96), np.int32)
    rng = np.random.default_rng(0)
    for k, (r, c) in enumerate([(20, 20), (20, 70), (70, 25), (65, 70), (45, 45)]):
        rr, cc = ellipse(r, c, 8 + k, 6 + k % 3, shape=labels.shape)
        labels[rr, cc] = k + 1
    image = rng.random((96, 96, 2)) * 0.3 + (labels > 0)[..., None] * np.array([0.5, 0.2])
    return image.astype(np.float32), labels


def test_old_files__a_checkpoint_and_a_table_from_before_load_and_embed_the_same(narrow_backbone):
    encoder = sr.load_encoder(DATA / "narrow_encoder_before_vit.pt").eval()
    old = read_table(DATA / "narrow_table_before_vit.parquet")
    record = old.attrs["encoder"]
    assert encoder.backbone_name == record["backbone"] == narrow_backbone
    assert encoder.fingerprint() == record["sha256"]  # the same encoder, as it was saved
    image, labels = _inputs()
    new = sr.embed_segments(image, labels, encoder, crop_size=32, channel_axis=2)
    assert list(new.columns) == list(old.columns) and len(new) == len(old) == 5
    emb = [c for c in old.columns if c.startswith("emb_")]
    np.testing.assert_allclose(new[emb].to_numpy(), old[emb].to_numpy(), rtol=1e-5, atol=1e-6)
