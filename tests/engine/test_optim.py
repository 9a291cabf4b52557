"""LARS against a hand computation, its parameter groups, resuming, and the warm-up cosine."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from napari_segrep.engine.optim import LARS, param_groups_for_lars, warmup_cosine_schedule

# Tiny problems: intra-op threads only add synchronisation (100x slower on a busy machine).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# LARS


def _norm(v):
    return math.sqrt(sum(x * x for x in v))


def test_lars__two_steps_match_hand_computation():
    lr, momentum, wd, eta, eps = 0.5, 0.9, 0.1, 0.02, 1e-8
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # adapted
    b = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))  # excluded
    opt = LARS(
        [
            {"params": [w]},
            # an excluded group ignores weight decay even when one is set
            {"params": [b], "lars_exclude": True, "weight_decay": 0.3},
        ],
        lr=lr,
        momentum=momentum,
        weight_decay=wd,
        trust_coefficient=eta,
        eps=eps,
    )
    grads_w = [[1.0, -2.0], [0.5, 0.25]]
    grads_b = [2.0, -1.0]

    hw, hb = [3.0, 4.0], 1.0
    mu_w, mu_b = [0.0, 0.0], 0.0
    for gw, gb in zip(grads_w, grads_b, strict=True):
        w.grad = torch.tensor(gw, dtype=torch.float64)
        b.grad = torch.tensor([gb], dtype=torch.float64)
        opt.step()
        # hand computation, adapted parameter
        g = [gi + wd * pi for gi, pi in zip(gw, hw, strict=True)]
        trust = eta * _norm(hw) / (_norm(g) + eps)
        mu_w = [momentum * m + trust * gi for m, gi in zip(mu_w, g, strict=True)]
        hw = [pi - lr * m for pi, m in zip(hw, mu_w, strict=True)]
        # excluded parameter: SGD with momentum, no weight decay, no trust ratio
        mu_b = momentum * mu_b + gb
        hb = hb - lr * mu_b
        torch.testing.assert_close(w.detach(), torch.tensor(hw, dtype=torch.float64))
        torch.testing.assert_close(b.detach(), torch.tensor([hb], dtype=torch.float64))


def test_lars__zero_parameter_norm_uses_trust_one():
    p = nn.Parameter(torch.zeros(3))
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=0.0)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, -0.2, -0.3]))


def test_lars__skips_parameters_without_gradient():
    p, q = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = LARS([p, q], lr=0.1)
    p.grad = torch.ones(2)
    opt.step()
    assert torch.equal(q.detach(), torch.ones(2))
    assert q not in opt.state
    assert not torch.equal(p.detach(), torch.ones(2))


def test_lars__minimises_a_least_squares_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g)
    model = nn.Linear(5, 1)
    opt = LARS(param_groups_for_lars(model, 0.0), lr=1.0, trust_coefficient=0.02)
    start = nn.functional.mse_loss(model(x), y).item()
    for _ in range(200):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * start, (start, loss.item())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": -0.1},
        {"lr": 0.1, "momentum": 1.0},
        {"lr": 0.1, "momentum": -0.1},
        {"lr": 0.1, "weight_decay": -1e-6},
        {"lr": 0.1, "trust_coefficient": 0.0},
        {"lr": 0.1, "eps": -1.0},
    ],
)
def test_lars__bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        LARS([nn.Parameter(torch.ones(2))], **kwargs)


def test_lars__bad_group_option_raises():
    with pytest.raises(ValueError, match="momentum"):
        LARS([{"params": [nn.Parameter(torch.ones(2))], "momentum": 2.0}], lr=0.1)


def _train_steps(model, opt, sched, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 3, 16, 16, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14 * 14, 5)
    )


def _make_opt(model):
    opt = LARS(param_groups_for_lars(model, 1e-4), lr=0.5, trust_coefficient=0.01)
    sched = warmup_cosine_schedule(opt, warmup_steps=3, total_steps=10, final_ratio=0.1)
    return opt, sched


def test_lars__state_dict_round_trip_resumes_exactly():
    # Reference: 8 uninterrupted steps.
    ref = _tiny_net(0)
    opt, sched = _make_opt(ref)
    _train_steps(ref, opt, sched, 4, seed=1)
    _train_steps(ref, opt, sched, 4, seed=2)

    # Interrupted after 4 steps, saved through bytes (weights_only), resumed in fresh objects.
    model = _tiny_net(0)
    opt, sched = _make_opt(model)
    _train_steps(model, opt, sched, 4, seed=1)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert any("momentum_buffer" in s for s in saved["opt"]["state"].values())

    resumed = _tiny_net(123)
    resumed.load_state_dict(saved["model"])
    opt, sched = _make_opt(resumed)
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    _train_steps(resumed, opt, sched, 4, seed=2)

    for (name, a), (_, b) in zip(
        ref.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_lars__without_resuming_momentum_the_run_differs():
    # The round-trip test above can fail: dropping the optimiser state changes the result.
    ref = _tiny_net(0)
    opt, sched = _make_opt(ref)
    _train_steps(ref, opt, sched, 4, seed=1)
    _train_steps(ref, opt, sched, 4, seed=2)

    model = _tiny_net(0)
    opt, sched = _make_opt(model)
    _train_steps(model, opt, sched, 4, seed=1)
    sched_state = sched.state_dict()
    opt, sched = _make_opt(model)
    sched.load_state_dict(sched_state)
    _train_steps(model, opt, sched, 4, seed=2)
    assert not torch.equal(ref[-1].weight, model[-1].weight)


# --------------------------------------------------------------------------------------------
# param_groups_for_lars


def test_param_groups_for_lars__resnet18_excludes_batchnorm_and_biases():
    model = resnet18(weights=None)
    groups = param_groups_for_lars(model, weight_decay=1e-6)
    assert len(groups) == 2
    adapted, excluded = groups
    assert adapted["weight_decay"] == 1e-6 and not adapted.get("lars_exclude", False)
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True
    adapted_ids = {id(p) for p in adapted["params"]}
    excluded_ids = {id(p) for p in excluded["params"]}

    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert id(module.weight) in excluded_ids and id(module.bias) in excluded_ids
        elif isinstance(module, nn.Conv2d):
            assert id(module.weight) in adapted_ids
        elif isinstance(module, nn.Linear):
            assert id(module.weight) in adapted_ids and id(module.bias) in excluded_ids
    all_ids = {id(p) for p in model.parameters()}
    assert adapted_ids | excluded_ids == all_ids
    assert not adapted_ids & excluded_ids
    LARS(groups, lr=0.1)  # and LARS accepts them


def test_param_groups_for_lars__skips_frozen_and_empty_groups():
    model = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 2))
    model[1].requires_grad_(False)
    groups = param_groups_for_lars(model, 0.0)
    assert len(groups) == 1 and groups[0]["params"] == [model[0].weight]
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups_for_lars(model, -1.0)


# --------------------------------------------------------------------------------------------
# warmup_cosine_schedule


def _lrs(steps, **kwargs):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = warmup_cosine_schedule(opt, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_schedule__matches_the_formula():
    w, t, r, base = 10, 110, 0.1, 0.5
    lrs = _lrs(130, warmup_steps=w, total_steps=t, final_ratio=r)
    assert lrs[0] == pytest.approx(base / w)  # ~0 at the start
    assert lrs[w - 1] == pytest.approx(base)  # 1 at the end of warm-up ...
    assert lrs[w] == pytest.approx(base)  # ... and at the start of the cosine
    assert lrs[w + (t - w) // 2] == pytest.approx(base * (r + (1 - r) * 0.5))  # middle
    assert lrs[t] == pytest.approx(base * r)  # end
    assert lrs[-1] == pytest.approx(base * r)  # and after
    for s in (3, 37, 85):
        if s < w:
            f = (s + 1) / w
        else:
            f = r + (1 - r) * 0.5 * (1 + math.cos(math.pi * (s - w) / (t - w)))
        assert lrs[s] == pytest.approx(base * f)
    assert all(a <= b for a, b in zip(lrs[:w], lrs[1 : w + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[w:t], lrs[w + 1 : t + 1], strict=True))


def test_warmup_cosine_schedule__without_warmup_starts_at_base():
    lrs = _lrs(6, warmup_steps=0, total_steps=4)
    assert lrs[0] == pytest.approx(0.5)
    assert lrs[2] == pytest.approx(0.25)
    assert lrs[4] == pytest.approx(0.0) and lrs[5] == pytest.approx(0.0)


def test_warmup_cosine_schedule__state_dict_round_trip():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sched = warmup_cosine_schedule(opt, warmup_steps=5, total_steps=40, final_ratio=0.2)
    for _ in range(17):
        opt.step()
        sched.step()
    state = sched.state_dict()

    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    # built with other settings on purpose: the state restores the step and the schedule
    sched2 = warmup_cosine_schedule(opt2, warmup_steps=1, total_steps=2)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(30):
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup_steps": 0, "total_steps": 0},
        {"warmup_steps": -1, "total_steps": 10},
        {"warmup_steps": 11, "total_steps": 10},
        {"warmup_steps": 1, "total_steps": 10, "final_ratio": 1.5},
        {"warmup_steps": 1, "total_steps": 10, "final_ratio": -0.1},
        {"warmup_steps": 1.5, "total_steps": 10},
    ],
)
def test_warmup_cosine_schedule__bad_config_raises(kwargs):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError):
        warmup_cosine_schedule(opt, **kwargs)
