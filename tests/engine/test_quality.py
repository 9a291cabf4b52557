"""Quality figures: RankMe and view agreement against direct computations and closed forms; the
monitor set's choice and its fixed views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_segrep._sample_data import make_cells
from napari_segrep.engine.dataset import SegmentDataset
from napari_segrep.engine.quality import (
    MAX_MONITOR,
    MIN_TRAINING_SEGMENTS,
    QualityMonitor,
    choose_monitor,
    effective_rank,
    is_collapsed,
    view_agreement,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _orthonormal(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


# ---------------------------------------------------------------------------- effective rank
def rankme_direct(z, eps=1e-7):
    """RankMe from the paper's formula, with numpy's SVD and a Python sum."""
    sigma = np.linalg.svd(np.asarray(z, np.float64), compute_uv=False)
    p = sigma / np.abs(sigma).sum() + eps
    return math.exp(-sum(float(pk) * math.log(float(pk)) for pk in p))


@pytest.mark.parametrize(("n", "d", "seed"), [(20, 8, 0), (8, 20, 1), (64, 64, 2)])
def test_effective_rank__matches_direct_computation(n, d, seed):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) ** 3  # uneven spectrum
    assert effective_rank(z) == pytest.approx(rankme_direct(z.numpy()), rel=1e-9)
    assert effective_rank(z.numpy()) == pytest.approx(effective_rank(z), rel=1e-12)


@pytest.mark.parametrize("r", [1, 2, 5, 12])
def test_effective_rank__equal_singular_values_give_the_rank(r):
    n, d = 40, 16
    z = 3.0 * _orthonormal(n, r, seed=r) @ _orthonormal(d, r, seed=100 + r).T  # r values of 3
    # exactly r without the epsilon; each zero singular value adds -eps log eps ~ 1.6e-6
    assert effective_rank(z) == pytest.approx(r, rel=1e-4)
    assert effective_rank(z, eps=1e-12) == pytest.approx(r, rel=1e-9)


def test_effective_rank__collapsed_matrices_give_one():
    assert effective_rank(torch.ones(50, 32)) == pytest.approx(1.0, rel=1e-4)
    assert effective_rank(torch.full((50, 32), -7.0)) == pytest.approx(1.0, rel=1e-4)
    assert effective_rank(torch.zeros(50, 32)) == pytest.approx(1.0, rel=1e-4)
    # one shared vector plus a tiny spread: barely above one
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 32, generator=g) + 1e-4 * torch.randn(50, 32, generator=g)
    assert 1.0 <= effective_rank(z) < 1.2


def test_effective_rank__bounds_and_scale_invariance():
    g = torch.Generator().manual_seed(4)
    for _ in range(20):
        n, d = (int(v) for v in torch.randint(2, 30, (2,), generator=g))
        z = torch.randn(n, d, generator=g)
        rank = effective_rank(z)
        assert 1.0 - 1e-6 <= rank <= min(n, d) + 1e-6
        assert effective_rank(1e3 * z) == pytest.approx(rank, rel=1e-6)


def test_effective_rank__bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        effective_rank(torch.ones(5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        effective_rank(torch.ones(0, 3))


# ---------------------------------------------------------------------------- view agreement
def agreement_direct(z_a, z_b):
    """Top-1 retrieval, both directions, with explicit loops (ties to the lowest index)."""
    a, b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    mean = np.concatenate([a, b]).mean(0)
    a, b = a - mean, b - mean
    n = len(a)

    def cos(u, v):
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        return 0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv))

    hits = 0
    for queries, keys in ((a, b), (b, a)):
        for i in range(n):
            sims = [cos(queries[i], keys[j]) for j in range(n)]
            hits += int(np.argmax(sims) == i)
    return hits / (2 * n)


def test_view_agreement__matches_direct_computation():
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        z_a = torch.randn(15, 6, generator=g)
        z_b = z_a + 0.8 * torch.randn(15, 6, generator=g)
        assert view_agreement(z_a, z_b) == pytest.approx(agreement_direct(z_a, z_b), abs=1e-12)


def test_view_agreement__identical_views_give_one():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(30, 8, generator=g)
    assert view_agreement(z, z) == 1.0
    # even with a common component far larger than the differences (centring removes it)
    z = 100.0 + 0.01 * torch.randn(30, 8, generator=g)
    assert view_agreement(z, z) == 1.0
    assert view_agreement(z.numpy(), z.numpy()) == 1.0


def test_view_agreement__swapped_partners_give_zero_and_collapse_gives_chance():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(10, 12, generator=g)
    shifted = z.roll(1, dims=0)  # every segment's "other view" is another segment's
    assert view_agreement(z, shifted) == 0.0
    constant = torch.ones(10, 12)
    assert view_agreement(constant, constant) == pytest.approx(1 / 10)


def test_view_agreement__unrelated_views_are_near_chance():
    g = torch.Generator().manual_seed(8)
    n = 40
    values = [
        view_agreement(torch.randn(n, 16, generator=g), torch.randn(n, 16, generator=g))
        for _ in range(200)
    ]
    assert 0.5 / n < np.mean(values) < 2.0 / n
    assert all(0.0 <= v <= 1.0 for v in values)


def test_view_agreement__bad_shapes_raise():
    with pytest.raises(ValueError, match="same shape"):
        view_agreement(torch.ones(4, 3), torch.ones(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        view_agreement(torch.ones(1, 3), torch.ones(1, 3))


def test_is_collapsed__relative_to_the_start():
    assert not is_collapsed(15.0, 15.0) and not is_collapsed(5.0, 15.0)
    assert is_collapsed(4.4, 15.0) and is_collapsed(1.2, 3.0)
    assert not is_collapsed(1.2, 1.3)  # started collapsed: no change to report
    assert not is_collapsed(float("nan"), 15.0)


# ---------------------------------------------------------------------------- monitor set
@pytest.mark.parametrize(
    ("n", "held_back", "size"),
    [
        (24, False, 24),  # few segments: all of them, monitored among the training segments
        (221, False, 221),  # 10% held back would leave 199 < 200 for training
        (222, True, 22),  # ... 200: held back
        (1000, True, 100),
        (5000, True, MAX_MONITOR),
    ],
)
def test_choose_monitor__the_default_rule(n, held_back, size):
    split = choose_monitor(n, seed=0)
    assert split.held_back is held_back
    assert len(split.monitor) == size
    assert split.kind == ("held-back" if held_back else "training")
    assert np.all(np.diff(split.monitor) > 0) and np.all(np.diff(split.train) > 0)
    if held_back:
        assert len(split.train) >= MIN_TRAINING_SEGMENTS
        assert not set(split.monitor) & set(split.train)
        assert sorted({*split.monitor, *split.train}) == list(range(n))
    else:
        assert list(split.train) == list(range(n))
        assert len(split.monitor) == min(n, MAX_MONITOR)


def test_choose_monitor__deterministic_from_the_seed():
    a, b = choose_monitor(1000, seed=3), choose_monitor(1000, seed=3)
    assert np.array_equal(a.monitor, b.monitor) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.monitor, choose_monitor(1000, seed=4).monitor)


def test_choose_monitor__explicit_size_hold_out_and_off():
    split = choose_monitor(24, seed=0, size=6, hold_out=True)
    assert split.held_back and len(split.monitor) == 6 and len(split.train) == 18
    split = choose_monitor(24, seed=0, size=6, hold_out=False)
    assert not split.held_back and len(split.monitor) == 6 and len(split.train) == 24
    split = choose_monitor(24, seed=0, hold_out=True)  # 10%, held back though training is small
    assert split.held_back and len(split.monitor) == 2 and len(split.train) == 22
    off = choose_monitor(24, seed=0, size=0)
    assert len(off.monitor) == 0 and list(off.train) == list(range(24))
    with pytest.raises(ValueError, match="too few"):
        choose_monitor(10, seed=0, size=9, hold_out=True)
    for bad in (-1, 1, 2.5, True):
        with pytest.raises(ValueError, match="monitor_size"):
            choose_monitor(24, seed=0, size=bad)
    with pytest.raises(ValueError, match="monitor_hold_out"):
        choose_monitor(24, seed=0, hold_out="yes")


@pytest.fixture(scope="module")
def dataset():
    image, labels, _ = make_cells(shape=(128, 128), n_cells=10, seed=3)
    return SegmentDataset(image, labels, crop_size=32)


def test_quality_monitor__fixed_views_untouched_state_and_restored_modes(dataset, narrow_encoder):
    import copy

    encoder = copy.deepcopy(narrow_encoder).train()
    encoder.backbone.layer1.eval()  # a module in another mode than its parent keeps it
    monitor = QualityMonitor(dataset, [1, 4, 7, 9], batch_size=3)
    dataset.set_epoch(5)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    state_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    z_a, z_b = monitor.embed(encoder)
    assert z_a.shape == z_b.shape == (4, encoder.embedding_dim)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no randomness consumed
    assert dataset.epoch == 5  # the training dataset's epoch is not touched
    assert encoder.training and not encoder.backbone.layer1.training
    assert encoder.backbone.layer2.training
    for k, v in encoder.state_dict().items():  # eval mode: BatchNorm statistics unchanged
        assert torch.equal(v, state_before[k]), k
    # the views are fixed: the same after the cache, in a new monitor, whatever the epoch
    again = QualityMonitor(dataset, [1, 4, 7, 9], batch_size=4)
    dataset.set_epoch(0)
    for z in (monitor.embed(encoder), again.embed(encoder)):
        torch.testing.assert_close(z[0], z_a, rtol=0, atol=1e-6)
        torch.testing.assert_close(z[1], z_b, rtol=0, atol=1e-6)
    # and they are not the training epochs' views
    training_views = dataset[1]
    fixed = monitor._dataset[1]
    assert not torch.equal(training_views[0], fixed[0])
    rank, agreement = monitor.evaluate(encoder)
    assert 1.0 <= rank <= 8.0 and 0.0 <= agreement <= 1.0


def test_quality_monitor__needs_two_segments(dataset):
    with pytest.raises(ValueError, match="at least 2"):
        QualityMonitor(dataset, [3])
