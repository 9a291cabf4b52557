"""refine_encoder and the supervised objective: the user's annotations teach the encoder, the
unlabelled segments keep their say, and a refinement that does not help is not kept."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import napari_segrep as sr
from napari_segrep._sample_data import make_cells
from napari_segrep.engine.dataset import SegmentDataset
from napari_segrep.engine.losses import NTXentLoss
from napari_segrep.engine.objectives import make_objective
from napari_segrep.engine.objectives.supervised import (
    ANNOTATED_SHARE,
    SupervisedObjective,
    supcon_loss,
)
from napari_segrep.engine.train_config import TrainConfig
from napari_segrep.engine.training import train_ssl
from napari_segrep.refine import decide

from ..conftest import NARROW_BACKBONE, TRAIN_SMALL

pytestmark = pytest.mark.usefixtures("narrow_backbone", "one_torch_thread")

CLASSES = ("a", "b")


@pytest.fixture(scope="module")
def cells():
    """24 generated cells of three kinds; 4 annotated cells of each of two kinds."""
    image, labels, kinds = make_cells(shape=(160, 160), n_cells=24, seed=2)
    names = sorted(set(kinds.values()))[:2]
    annotations = {}
    for name, cls in zip(names, CLASSES, strict=True):
        for lab in [lab for lab, k in sorted(kinds.items()) if k == name][:4]:
            annotations[int(lab)] = cls
    return image, labels, annotations


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), dim=st.integers(2, 16), seed=st.integers(0, 2**16))
def test_supcon_loss__is_ntxent_when_each_group_is_two_views(n, dim, seed):
    """Without annotations (every segment its own group), the supervised contrastive term is
    exactly the self-supervised loss: the unlabelled majority is trained as before."""
    g = torch.Generator().manual_seed(seed)
    za, zb = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    groups = torch.arange(n).repeat(2)
    ours = supcon_loss(torch.cat([za, zb]), groups)
    assert torch.allclose(ours, NTXentLoss(temperature=0.2)(za, zb), atol=1e-5)


def test_supcon_loss__pulls_a_class_together():
    """Same-class views are positives: embeddings that cluster by class have the lower loss."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 8, generator=g) * 4
    cls = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = centres[cls] + 0.1 * torch.randn(6, 8, generator=g)
    mixed = centres[cls[torch.tensor([0, 3, 1, 4, 2, 5])]] + 0.1 * torch.randn(6, 8, generator=g)
    groups = cls.repeat(2)
    assert supcon_loss(clustered.repeat(2, 1), groups) < supcon_loss(mixed.repeat(2, 1), groups)


def _supervised_dataset(image, labels, annotations, **kw):
    dataset = SegmentDataset(image, labels, crop_size=32, **kw)
    index = {lab: CLASSES.index(c) for lab, c in annotations.items()}
    dataset.annotate({(0, lab): t for lab, t in index.items()})
    return dataset


def test_supervised_objective__pixels_outside_the_segment_change_neither_loss_nor_gradients(
    cells,
):
    """Dual masking holds for the supervised objective too."""
    image, labels, annotations = cells
    dataset = _supervised_dataset(image, labels, annotations)
    items = [dataset[i] for i in range(8)]
    a, ma, b, mb, target, index = (torch.stack(t) for t in zip(*items, strict=True))
    assert (target >= 0).any() and (target < 0).any()
    config = TrainConfig(
        objective="supervised",
        classes=CLASSES,
        backbone=NARROW_BACKBONE,
        crop_size=32,
        **{k: v for k, v in TRAIN_SMALL.items() if k.startswith("projection")},
    )
    objective = make_objective(config)
    model = objective.build_model(sr.SegmentEncoder(NARROW_BACKBONE, seed=0)).train()

    def loss_and_grads(va, vb):
        model.zero_grad(set_to_none=True)
        batch = (va, ma, vb, mb, target, index)
        out = objective.compute(model, batch, to_device=lambda t: t, autocast=nullcontext)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads(a, b)
    noise = torch.rand(a.shape, generator=torch.Generator().manual_seed(1))
    loss_other, grads_other = loss_and_grads(
        torch.where(ma, a, 5 * noise), torch.where(mb, b, 5 * noise)
    )
    assert torch.isfinite(loss) and loss > 0
    assert torch.equal(loss, loss_other)
    for g, h in zip(grads, grads_other, strict=True):
        assert torch.equal(g, h)


def test_supervised_objective__an_epoch_draws_the_annotated_segments_again_each_class_equally(
    cells,
):
    image, labels, annotations = cells
    dataset = _supervised_dataset(image, labels, annotations)
    objective = SupervisedObjective(TrainConfig(objective="supervised", classes=CLASSES))
    train = np.arange(len(dataset))
    drawn = objective.training_indices(dataset, train)
    assert set(drawn) == set(train)  # every segment, at least once
    targets = dataset.targets[drawn]
    share = (targets >= 0).mean()
    assert ANNOTATED_SHARE - 0.1 < share < ANNOTATED_SHARE + 0.15
    assert abs((targets == 0).sum() - (targets == 1).sum()) <= 4


def test_refine_encoder__refines_reports_and_resumes_exactly(cells, tmp_path):
    """A refinement trains, compares the encoders on held-out annotations, and (stopped after
    its first step, resumed) gives the same weights as an uninterrupted one."""
    image, labels, annotations = cells
    options = {"epochs": 1, "monitor_size": 0, **TRAIN_SMALL}
    start = sr.SegmentEncoder(NARROW_BACKBONE, seed=0)
    seen = []
    full = sr.refine_encoder(
        image,
        labels,
        annotations,
        encoder=start,
        progress=lambda d, t: seen.append((d, t)),
        keep_if_worse=True,
        **options,
    )
    assert full.accepted and full.encoder is full.refined_encoder
    assert full.classes == CLASSES and full.n_learned + full.n_held_out == 8
    assert full.n_held_out == 2  # a third of each class's 4, at least 1
    assert 0 <= full.accuracy_before <= 1 and 0 <= full.accuracy_after <= 1
    assert seen[-1][0] == seen[-1][1] == len(full.history) > 1
    assert full.encoder.fingerprint() != start.fingerprint()  # its own fingerprint
    assert np.isfinite([r["loss_classes"] for r in full.history]).all()

    steps = []
    first = sr.refine_encoder(
        image,
        labels,
        annotations,
        encoder=start,
        checkpoint_dir=tmp_path,
        on_step=steps.append,
        should_stop=lambda: len(steps) >= 1,
        **options,
    )
    assert first.stopped and first.encoder.fingerprint() == start.fingerprint()
    assert first.refined_encoder is None and "stopped" in first.message
    second = sr.refine_encoder(
        image,
        labels,
        annotations,
        encoder=start,
        resume=first.checkpoint_path,
        keep_if_worse=True,
        **options,
    )
    assert [r["loss"] for r in second.history] == [r["loss"] for r in full.history]
    assert second.encoder.fingerprint() == full.encoder.fingerprint()
    # other annotations cannot continue this run
    other = dict(annotations)
    first_label = next(lab for lab, c in annotations.items() if c == "a")
    other[first_label] = "b"
    with pytest.raises(ValueError, match="refined from other annotations"):
        sr.refine_encoder(
            image, labels, other, encoder=start, resume=first.checkpoint_path, **options
        )


@given(before=st.floats(0, 1), after=st.floats(0, 1), insist=st.booleans())
def test_refine_decision__worse_is_never_kept_silently(before, after, insist):
    accepted, message = decide(before, after, 7, keep_if_worse=insist)
    assert accepted == (after >= before or insist)
    assert f"{before:.3f} -> {after:.3f}" in message
    if after < before:
        assert ("kept the old encoder" in message) != insist
        assert "worse" in message or "did not help" in message


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ({1: "a", 2: "a", 3: "a"}, "at least 2 classes"),
        ({1: "a", 2: "a", 3: "a", 4: "b", 5: "b"}, r"at least 3 annotated segments.*'b' \(2\)"),
        ({1: "a", 2: "a", 3: "a", 4: "b", 5: "b", 999: "b"}, r"not in the labels \(label 999\)"),
    ],
)
def test_refine_encoder__bad_annotations_are_refused_before_any_work(cells, annotations, match):
    image, labels, _ = cells
    with pytest.raises(ValueError, match=match):
        sr.refine_encoder(image, labels, annotations, encoder=sr.SegmentEncoder(NARROW_BACKBONE))


def test_train_ssl__the_supervised_objective_needs_annotations(cells):
    image, labels, _ = cells
    with pytest.raises(ValueError, match="refine_encoder"):
        train_ssl(image, labels, objective="supervised", epochs=1, **TRAIN_SMALL)
    with pytest.raises(ValueError, match="classes are the supervised objective's"):
        TrainConfig(classes=CLASSES)
