"""TiCo, NT-Xent and VICReg against direct computations, closed forms and an easy problem."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from napari_segrep.engine.distributed import gather
from napari_segrep.engine.losses import (
    LOSSES,
    NTXentLoss,
    TiCoLoss,
    VICRegLoss,
    make_loss,
)

# Tiny problems: intra-op threads only add synchronisation (100x slower on a busy machine).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# Direct computations: plain Python floats and explicit loops, written from the papers.


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(u, v):
    return sum(x * y for x, y in zip(u, v, strict=True))


def tico_direct(z_a, z_b, c_prev, *, beta, rho):
    """Loss and updated covariance, from lists of rows; ``c_prev=None`` before the first update
    (the running covariance starts as the first batch's)."""
    a = [_unit(r) for r in z_a]
    b = [_unit(r) for r in z_b]
    n, d = len(a), len(a[0])
    batch = [[sum(a[i][j] * a[i][k] for i in range(n)) / n for k in range(d)] for j in range(d)]
    c_prev = batch if c_prev is None else c_prev
    c = [[beta * c_prev[j][k] + (1 - beta) * batch[j][k] for k in range(d)] for j in range(d)]
    invariance = sum(_dot(a[i], b[i]) for i in range(n)) / n
    contrast = (
        sum(a[i][j] * c[j][k] * a[i][k] for i in range(n) for j in range(d) for k in range(d)) / n
    )
    return -invariance + rho * contrast, c


def ntxent_direct(z_a, z_b, *, temperature):
    u = [_unit(r) for r in list(z_a) + list(z_b)]
    n2 = len(u)
    n = n2 // 2
    total = 0.0
    for k in range(n2):
        p = (k + n) % n2
        denominator = sum(math.exp(_dot(u[k], u[j]) / temperature) for j in range(n2) if j != k)
        total += -math.log(math.exp(_dot(u[k], u[p]) / temperature) / denominator)
    return total / n2


def vicreg_direct(z_a, z_b, *, sim_weight, var_weight, cov_weight, eps, gamma):
    n, d = len(z_a), len(z_a[0])
    mse = sum((z_a[i][j] - z_b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance(z):
        total = 0.0
        for j in range(d):
            mean = sum(z[i][j] for i in range(n)) / n
            var = sum((z[i][j] - mean) ** 2 for i in range(n)) / (n - 1)
            total += max(0.0, gamma - math.sqrt(var + eps))
        return total / d

    def covariance(z):
        means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    cov = sum((z[i][j] - means[j]) * (z[i][k] - means[k]) for i in range(n))
                    total += (cov / (n - 1)) ** 2
        return total / d

    return (
        sim_weight * mse
        + var_weight * (variance(z_a) + variance(z_b))
        + cov_weight * (covariance(z_a) + covariance(z_b))
    )


def _pair(n=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=torch.float64)
    z_b = z_a + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z_a, z_b


# --------------------------------------------------------------------------------------------
# TiCo


def test_tico_loss__matches_direct_computation():
    z_a, z_b = _pair()
    loss_fn = TiCoLoss(3, beta=0.7, rho=3.0).double()
    c = None
    for step in range(3):  # three steps: the running covariance carries over
        za, zb = z_a + step, z_b - step
        expected, c = tico_direct(za.tolist(), zb.tolist(), c, beta=0.7, rho=3.0)
        got = loss_fn(za, zb)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        torch.testing.assert_close(loss_fn.C, torch.tensor(c, dtype=torch.float64))


def test_tico_loss__closed_form_for_orthonormal_identical_views():
    n = 5
    z = 3.0 * torch.eye(n, dtype=torch.float64)  # normalised rows: the standard basis
    loss = TiCoLoss(n, beta=0.9, rho=20.0).double()(z, z)
    # the first batch sets C = I / N, and z_i^T C z_i = 1 / N
    assert loss.item() == pytest.approx(-1.0 + 20.0 / n, rel=1e-12)
    # from a running covariance of zero (the paper's start), C = (1 - beta) I / N instead
    from_zero = TiCoLoss(n, beta=0.9, rho=20.0).double()
    from_zero.initialized.fill_(True)
    assert from_zero(z, z).item() == pytest.approx(-1.0 + 20.0 * 0.1 / n, rel=1e-12)


def test_tico_loss__covariance_starts_from_the_first_batch():
    z_a, z_b = _pair(seed=9)
    loss_fn = TiCoLoss(3, beta=0.9).double()
    assert not loss_fn.initialized and "initialized" in loss_fn.state_dict()
    loss_fn.eval()(z_a, z_b)  # eval mode stores nothing
    assert not loss_fn.initialized and not loss_fn.C.any()
    loss_fn.train()(z_a, z_b)
    u = nn.functional.normalize(z_a, dim=1)
    torch.testing.assert_close(loss_fn.C, u.T @ u / len(u))
    assert loss_fn.initialized


@pytest.mark.parametrize("nonzero", [True, False])
def test_tico_loss__a_state_without_the_flag_loads_initialised_when_c_is_nonzero(nonzero):
    """Checkpoints written before the ``initialized`` flag existed still load: a non-zero C
    continues, a zero C starts from the next batch."""
    old = {"C": torch.eye(3) / 3 if nonzero else torch.zeros(3, 3)}
    restored = TiCoLoss(3)
    restored.load_state_dict(old)
    assert bool(restored.initialized) is nonzero
    assert set(TiCoLoss.upgrade_state_dict(old)) == {"C", "initialized"}
    assert bool(TiCoLoss.upgrade_state_dict(old)["initialized"]) is nonzero
    assert "initialized" not in old  # not modified


def test_losses__terms_add_up_to_the_loss():
    z_a, z_b = _pair(seed=10)
    for loss_fn, names in (
        (TiCoLoss(3).double(), {"invariance", "covariance"}),
        (VICRegLoss(), {"invariance", "variance", "covariance"}),
        (NTXentLoss(), set()),
    ):
        loss = loss_fn(z_a, z_b)
        assert set(loss_fn.terms) == names
        if names:
            total = sum(loss_fn.terms.values())
            assert total.item() == pytest.approx(loss.item(), rel=1e-12)
            assert not any(t.requires_grad for t in loss_fn.terms.values())
    tico = TiCoLoss(3).double()
    tico(z_a, z_a)
    # identical views: the invariance term is minus the mean cosine similarity, -1
    assert tico.terms["invariance"].item() == pytest.approx(-1.0, rel=1e-12)


def test_tico_loss__covariance_is_a_persistent_buffer():
    loss_fn = TiCoLoss(3)
    assert "C" in loss_fn.state_dict()
    assert any(name == "C" for name, _ in loss_fn.named_buffers())
    assert not any(True for _ in loss_fn.parameters())
    z_a, z_b = _pair(seed=1)
    loss_fn(z_a.float(), z_b.float())
    restored = TiCoLoss(3)
    restored.load_state_dict(loss_fn.state_dict())
    torch.testing.assert_close(restored.C, loss_fn.C)
    z_a, z_b = _pair(seed=2)
    torch.testing.assert_close(
        restored(z_a.float(), z_b.float()), loss_fn(z_a.float(), z_b.float())
    )


def test_tico_loss__covariance_updated_in_training_mode_only():
    z_a, z_b = _pair(seed=3)
    loss_fn = TiCoLoss(3).double()
    loss_fn(z_a, z_b)
    after_train = loss_fn.C.clone()
    assert after_train.abs().sum() > 0

    loss_fn.eval()
    eval_loss = loss_fn(z_a + 1, z_b)
    torch.testing.assert_close(loss_fn.C, after_train, rtol=0, atol=0)
    # eval computes the same value as training would, it just does not store the update
    loss_fn.train()
    assert loss_fn(z_a + 1, z_b).item() == pytest.approx(eval_loss.item(), rel=1e-12)
    assert not torch.equal(loss_fn.C, after_train)


def test_tico_loss__batch_covariance_carries_no_gradient():
    beta, rho = 0.8, 5.0
    z_a, z_b = _pair(n=6, d=4, seed=4)
    c0 = torch.rand(4, 4, dtype=torch.float64)
    c0 = c0 @ c0.T
    loss_fn = TiCoLoss(4, beta=beta, rho=rho).double()
    loss_fn.C.copy_(c0)
    loss_fn.initialized.fill_(True)

    za = z_a.clone().requires_grad_(True)
    zb = z_b.clone().requires_grad_(True)
    loss_fn(za, zb).backward()
    assert not loss_fn.C.requires_grad

    # Reference: the same formula with the updated C as a constant.
    ra = z_a.clone().requires_grad_(True)
    rb = z_b.clone().requires_grad_(True)
    na, nb = nn.functional.normalize(ra, dim=1), nn.functional.normalize(rb, dim=1)
    c_const = (beta * c0 + (1 - beta) * na.T @ na / na.shape[0]).detach()
    ref = -(na * nb).sum(1).mean() + rho * ((na @ c_const) * na).sum(1).mean()
    ref.backward()
    torch.testing.assert_close(loss_fn.C, c_const)
    torch.testing.assert_close(za.grad, ra.grad)
    torch.testing.assert_close(zb.grad, rb.grad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"dim": -3},
        {"dim": 2.0},
        {"dim": 4, "beta": 1.0},
        {"dim": 4, "beta": -0.1},
        {"dim": 4, "rho": -1.0},
        {"dim": 4, "rho": float("nan")},
    ],
)
def test_tico_loss__bad_config_raises(kwargs):
    dim = kwargs.pop("dim")
    with pytest.raises(ValueError):
        TiCoLoss(dim, **kwargs)


def test_tico_loss__bad_shapes_raise():
    loss_fn = TiCoLoss(3)
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="dimension"):
        loss_fn(torch.randn(4, 5), torch.randn(4, 5))


# --------------------------------------------------------------------------------------------
# NT-Xent


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_ntxent_loss__matches_direct_computation(temperature):
    z_a, z_b = _pair(seed=5)
    expected = ntxent_direct(z_a.tolist(), z_b.tolist(), temperature=temperature)
    got = NTXentLoss(temperature=temperature)(z_a, z_b)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_ntxent_loss__closed_form_for_orthonormal_identical_views():
    n, t = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)
    loss = NTXentLoss(temperature=t)(z, z)
    # each anchor: positive at similarity 1, the 2N - 2 negatives at 0
    assert loss.item() == pytest.approx(math.log(1 + (2 * n - 2) * math.exp(-1 / t)), rel=1e-12)


def test_ntxent_loss__is_symmetric_in_the_views():
    z_a, z_b = _pair(seed=6)
    loss_fn = NTXentLoss()
    assert loss_fn(z_a, z_b).item() == pytest.approx(loss_fn(z_b, z_a).item(), rel=1e-12)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_ntxent_loss__bad_temperature_raises(temperature):
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=temperature)


def test_ntxent_loss__single_sample_raises():
    with pytest.raises(ValueError, match="at least 2"):
        NTXentLoss()(torch.randn(1, 3), torch.randn(1, 3))


# --------------------------------------------------------------------------------------------
# VICReg

_VICREG_DEFAULTS = {
    "sim_weight": 25.0,
    "var_weight": 25.0,
    "cov_weight": 1.0,
    "eps": 1e-4,
    "gamma": 1.0,
}


@pytest.mark.parametrize(
    "kwargs",
    [
        _VICREG_DEFAULTS,
        {"sim_weight": 1.0, "var_weight": 2.0, "cov_weight": 3.0, "eps": 1e-2, "gamma": 4.0},
    ],
)
def test_vicreg_loss__matches_direct_computation(kwargs):
    z_a, z_b = _pair(seed=7)
    expected = vicreg_direct(z_a.tolist(), z_b.tolist(), **kwargs)
    got = VICRegLoss(**kwargs)(z_a, z_b)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_vicreg_loss__closed_form_for_collapsed_identical_views():
    z = torch.ones(6, 4, dtype=torch.float64)  # no variance, no covariance, no disagreement
    loss = VICRegLoss()(z, z)
    assert loss.item() == pytest.approx(25.0 * 2 * (1.0 - math.sqrt(1e-4)), rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sim_weight": -1.0},
        {"var_weight": -1.0},
        {"cov_weight": float("nan")},
        {"eps": 0.0},
        {"gamma": 0.0},
    ],
)
def test_vicreg_loss__bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        VICRegLoss(**kwargs)


def test_vicreg_loss__single_sample_raises():
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 3), torch.randn(1, 3))


# --------------------------------------------------------------------------------------------
# All three: they fall on an easy problem.
#
# 16 points whose identity lives in 4 input dimensions, plus 4 nuisance dimensions redrawn for
# every view (std 1.5): a linear encoder must learn to ignore the nuisance to bring the views
# of a point together and tell points apart.

_N, _SIGNAL, _NUISANCE, _OUT = 16, 4, 4, 8


def _views(points, generator):
    n = points.shape[0]
    signal = points + 0.05 * torch.randn(n, _SIGNAL, generator=generator)
    nuisance = 1.5 * torch.randn(n, _NUISANCE, generator=generator)
    return torch.cat([signal, nuisance], dim=1)


def _nearest_positive_rate(z_a, z_b):
    u_a = nn.functional.normalize(z_a, dim=1)
    u_b = nn.functional.normalize(z_b, dim=1)
    nearest = (u_a @ u_b.T).argmax(dim=1)
    return (nearest == torch.arange(z_a.shape[0])).float().mean().item()


def _train(loss_fn, eval_fn, *, steps=150, lr=0.03):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    points = torch.randn(_N, _SIGNAL, generator=g)
    encoder = nn.Linear(_SIGNAL + _NUISANCE, _OUT)
    x_a, x_b = _views(points, g), _views(points, g)  # fixed evaluation views
    with torch.no_grad():
        start = eval_fn(encoder(x_a), encoder(x_b)).item()
        start_rate = _nearest_positive_rate(encoder(x_a), encoder(x_b))
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn(encoder(_views(points, g)), encoder(_views(points, g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = eval_fn(encoder(x_a), encoder(x_b)).item()
        end_rate = _nearest_positive_rate(encoder(x_a), encoder(x_b))
    return start, end, start_rate, end_rate


def test_tico_loss__falls_on_an_easy_problem():
    # Evaluate with beta=0 (C = this batch's covariance) so start and end are comparable.
    evaluator = TiCoLoss(_OUT, beta=0.0).eval()
    start, end, start_rate, end_rate = _train(TiCoLoss(_OUT), evaluator)
    assert end < start - 1.0, (start, end)
    # The covariance term rewards spreading over all 8 output dimensions, nuisance included,
    # so TiCo does not find every positive here; it still finds far more than at the start.
    assert end_rate > start_rate + 0.5, (start_rate, end_rate)


def _tico_first_losses(*, from_zero: bool, seed: int, steps: int = 10) -> list[float]:
    """TiCo's loss over the first steps of optimising the easy problem's linear encoder."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(_N, _SIGNAL, generator=g)
    encoder = nn.Linear(_SIGNAL + _NUISANCE, _OUT)
    loss_fn = TiCoLoss(_OUT)
    if from_zero:  # the paper's start: a running covariance of zero, warming up
        loss_fn.initialized.fill_(True)
    opt = torch.optim.Adam(encoder.parameters(), lr=0.03)
    losses = []
    for _ in range(steps):
        loss = loss_fn(encoder(_views(points, g)), encoder(_views(points, g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tico_loss__does_not_rise_at_the_start_of_training(seed):
    """Users read a loss that rises at the start as divergence.  From a zero covariance (the
    paper's start) TiCo's loss rose over the first steps while the covariance filled up; from
    the first batch's covariance the first loss is the highest of the first ten."""
    from_zero = _tico_first_losses(from_zero=True, seed=seed)
    assert from_zero[0] < min(from_zero[1:]) and from_zero[-1] > from_zero[0] + 0.5, from_zero
    losses = _tico_first_losses(from_zero=False, seed=seed)
    assert losses[0] >= max(losses[1:]), losses
    assert losses[-1] < losses[0] - 0.5, losses


def test_ntxent_loss__falls_on_an_easy_problem_and_positives_become_nearest():
    loss_fn = NTXentLoss(temperature=0.5)
    start, end, start_rate, end_rate = _train(loss_fn, loss_fn)
    assert end < start - 0.5, (start, end)
    assert start_rate < 1.0  # the nuisance confuses the random encoder ...
    assert end_rate == 1.0  # ... the trained one finds every positive


def test_vicreg_loss__falls_on_an_easy_problem():
    loss_fn = VICRegLoss()
    start, end, start_rate, end_rate = _train(loss_fn, loss_fn)
    assert end < 0.5 * start, (start, end)
    assert start_rate < 1.0
    assert end_rate == 1.0


# --------------------------------------------------------------------------------------------
# Registry


def test_make_loss__builds_each_registered_loss():
    assert set(LOSSES) == {"tico", "ntxent", "vicreg"}
    tico = make_loss("tico", dim=7, rho=1.0)
    assert isinstance(tico, TiCoLoss) and tico.C.shape == (7, 7) and tico.rho == 1.0
    ntxent = make_loss("ntxent", dim=7, temperature=0.2)
    assert isinstance(ntxent, NTXentLoss) and ntxent.temperature == 0.2
    assert isinstance(make_loss("vicreg", dim=7), VICRegLoss)


def test_make_loss__unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="ntxent.*tico.*vicreg"):
        make_loss("simclr", dim=8)


def test_make_loss__bad_dim_or_option_raises():
    with pytest.raises(ValueError, match="dim"):
        make_loss("vicreg", dim=0)
    with pytest.raises(ValueError, match="temperature"):
        make_loss("ntxent", dim=8, temperature=0.0)


# --------------------------------------------------------------------------------------------
# Distributed gathering


def test_gather__is_identity_without_a_process_group():
    z = torch.randn(3, 2)
    assert gather(z) is z


def _distributed_worker(rank, world_size, init_file, out_dir, z_a, z_b):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        n = z_a.shape[0] // world_size
        rows = slice(rank * n, (rank + 1) * n)
        results = {}
        for name in LOSSES:
            loss_fn = make_loss(name, dim=z_a.shape[1], gather_distributed=True).double()
            za = z_a[rows].clone().requires_grad_(True)
            zb = z_b[rows].clone().requires_grad_(True)
            loss = loss_fn(za, zb)
            loss.backward()
            results[name] = {"loss": loss.detach(), "ga": za.grad, "gb": zb.grad}
            if name == "tico":
                results[name]["C"] = loss_fn.C.clone()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing torch
def test_losses__gather_distributed_equals_the_global_batch(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    world_size = 2
    z_a, z_b = _pair(n=6, d=3, seed=8)
    mp.spawn(
        _distributed_worker,
        args=(world_size, str(tmp_path / "init"), str(tmp_path), z_a, z_b),
        nprocs=world_size,
        join=True,
    )
    for name in LOSSES:
        loss_fn = make_loss(name, dim=3).double()
        za = z_a.clone().requires_grad_(True)
        zb = z_b.clone().requires_grad_(True)
        loss = loss_fn(za, zb)
        loss.backward()
        for rank in range(world_size):
            got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)[name]
            rows = slice(rank * 3, (rank + 1) * 3)
            torch.testing.assert_close(got["loss"], loss.detach())
            # all_gather's backward sums over ranks: world_size x the global gradient, which
            # DDP's averaging divides back.
            torch.testing.assert_close(got["ga"], world_size * za.grad[rows])
            torch.testing.assert_close(got["gb"], world_size * zb.grad[rows])
            if name == "tico":
                torch.testing.assert_close(got["C"], loss_fn.C)
