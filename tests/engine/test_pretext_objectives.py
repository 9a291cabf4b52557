"""BiaPy's pretext tasks as objectives (``masking``, ``crappify``): one view per segment, a
decoder on the encoder's masked feature map, a pixel loss inside the segment."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.dataset import SegmentDataset
from napari_segrep.engine.masking import binarize_mask, masked_mean_pool
from napari_segrep.engine.objectives import make_objective
from napari_segrep.engine.train_config import TrainConfig
from napari_segrep.engine.training import train_ssl

from ..conftest import NARROW_BACKBONE, NARROW_BACKBONE_3D, TRAIN_SMALL

pytestmark = pytest.mark.usefixtures("narrow_backbone", "narrow_backbone_3d")

PRETEXT = ("masking", "crappify")
SMALL = {k: v for k, v in TRAIN_SMALL.items() if not k.startswith("projection")}


@pytest.fixture(scope="module")
def cells():
    image, labels, _ = make_cells(shape=(160, 160), n_cells=24, seed=2)  # 3 steps an epoch
    return image, labels


def _weights(encoder) -> list[torch.Tensor]:
    return [p.detach().clone() for p in encoder.parameters()]


def test_segment_encoder__feature_map_is_what_the_embedding_pools(narrow_encoder):
    """The embedding path is unchanged: the masked mean of the exposed map is the embedding."""
    images = torch.rand(3, 1, 64, 64)
    masks = torch.zeros(3, 1, 64, 64, dtype=torch.bool)
    masks[:, :, 10:50, 20:45] = True
    with torch.no_grad():
        features, grid = narrow_encoder.feature_map(images, masks)
        pooled = masked_mean_pool(features, mask=grid)
        assert features.shape == (3, 64, 2, 2) and grid.shape == (3, 1, 2, 2)
        assert torch.equal(pooled, narrow_encoder(images, masks))
    assert torch.equal(grid, binarize_mask(grid, dtype=grid.dtype))


def test_segment_dataset__one_view_items_are_the_first_view_with_a_reproducible_key(cells):
    image, labels = cells
    two = SegmentDataset(image, labels, crop_size=32, seed=3)
    one = SegmentDataset(image, labels, crop_size=32, seed=3, views=1)
    a, ma, _, _ = two[5]
    view, mask, key = one[5]
    assert torch.equal(view, a) and torch.equal(mask, ma)
    assert key.dtype == torch.int64 and int(one[5][2]) == int(key)
    one.set_epoch(1)
    assert int(one[5][2]) != int(key)  # a new epoch draws new patches / noise


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("name", PRETEXT)
def test_pretext_objective__pixels_outside_the_segment_change_neither_loss_nor_gradients(
    cells, name
):
    """Dual masking holds: the loss and every gradient are the same whatever lies outside."""
    image, labels = cells
    dataset = SegmentDataset(image, labels, crop_size=32, views=1)
    items = [dataset[i] for i in range(6)]
    views, masks, keys = (torch.stack(t) for t in zip(*items, strict=True))
    config = TrainConfig(objective=name, backbone=NARROW_BACKBONE, crop_size=32, batch_size=8)
    objective = make_objective(config)
    model = objective.build_model(sr.SegmentEncoder(NARROW_BACKBONE, seed=0)).train()

    def loss_and_grads(v):
        model.zero_grad(set_to_none=True)
        batch = (v, masks, keys)
        out = objective.compute(model, batch, to_device=lambda t: t, autocast=nullcontext)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(views)
    noise = torch.rand(views.shape, generator=torch.Generator().manual_seed(1))
    other = torch.where(masks, views, 5 * noise)
    assert not torch.equal(other, views)
    loss_other, grads_other = loss_and_grads(other)
    assert torch.isfinite(loss) and loss > 0
    assert torch.equal(loss, loss_other)
    for g, h in zip(grads, grads_other, strict=True):
        assert torch.equal(g, h)


@pytest.mark.usefixtures("one_torch_thread")  # many small ops: far faster
@pytest.mark.parametrize("name", PRETEXT)
def test_train_ssl__a_pretext_objective_trains_and_resumes_exactly(cells, tmp_path, name):
    """Finite losses, the weights move, and stopped after its first step (mid-epoch) then
    resumed, the same losses and weights as the uninterrupted run."""
    image, labels = cells
    options = {"objective": name, "epochs": 1, "monitor_size": 8, **SMALL}
    start = sr.SegmentEncoder(NARROW_BACKBONE, seed=0)
    full = train_ssl(image, labels, encoder=start, **options)
    losses = [r["loss"] for r in full.history]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert any(
        not torch.equal(p, q) for p, q in zip(_weights(start), _weights(full.encoder), strict=True)
    )
    assert len(full.quality) == 2  # the view agreement is measured on two views all the same
    steps = []
    first = train_ssl(
        image,
        labels,
        encoder=start,
        checkpoint_dir=tmp_path,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 1,
        **options,
    )
    assert first.stopped and len(first.history) == 1
    second = train_ssl(image, labels, encoder=start, resume=first.checkpoint_path, **options)
    assert [r["loss"] for r in second.history] == losses
    for p, q in zip(_weights(full.encoder), _weights(second.encoder), strict=True):
        assert torch.equal(p, q)
    # a checkpoint of another objective: one line naming both, before any step
    with pytest.raises(ValueError, match=rf"objective='{name}', this run is 'contrastive'"):
        train_ssl(
            image, labels, resume=first.checkpoint_path, **{**options, "objective": "contrastive"}
        )


@pytest.mark.usefixtures("one_torch_thread")
def test_train_ssl__the_masking_loss_falls_on_a_learnable_case(cells):
    """Flat cells (one value inside each) are trivially restorable: the loss falls."""
    image, labels = cells
    flat = np.where(labels > 0, 0.8, 0.0).astype(np.float32)
    options = {"epochs": 4, "lr": 3e-3, "monitor_size": 0, **SMALL}
    result = train_ssl(flat, labels, objective="masking", **options)
    losses = [r["loss"] for r in result.history]
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.3 * losses[0]


@pytest.mark.usefixtures("one_torch_thread")
def test_train_ssl__pretext_objectives_train_a_3d_backbone_and_refuse_the_plane_ones():
    labels = np.zeros((24, 40, 40), np.int32)
    zz, yy, xx = np.mgrid[:24, :40, :40]
    for k, (cz, cy, cx) in enumerate([(8, 10, 10), (8, 28, 28), (16, 10, 28), (16, 28, 10)]):
        labels[(zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= 25] = k + 1
    image = (labels > 0).astype(np.float32) * np.random.default_rng(0).random(labels.shape)
    options = {"axes": "zyx", "crop_size": 16, "batch_size": 4, "device": "cpu"}
    result = train_ssl(
        image, labels, objective="crappify", epochs=1, backbone=NARROW_BACKBONE_3D, **options
    )
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    broken = np.full(image.shape, np.nan, np.float32)  # never looked at: refused before
    with pytest.raises(
        ValueError,
        match=r"^objective='masking' .* backbone='resnet18_planes' has no single one.*resnet18_3d",
    ):
        train_ssl(broken, labels, objective="masking", backbone="resnet18_planes", **options)


def test_train_ssl__the_contrastive_loss_with_a_pretext_objective_is_refused(cells):
    image, labels = cells
    with pytest.raises(ValueError, match=r"^loss='tico' is the contrastive .*: leave loss out$"):
        train_ssl(image, labels, objective="masking", loss="tico", **SMALL)
