"""Attacks on a tiny fixed CNN (normalization inside), parametrized from list_attacks()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ironsight.cluster.synthetic import render_arrays
from ironsight.robustness.attacks import (
    DEFAULT_EPSILONS,
    attack_norm,
    default_epsilons,
    list_attacks,
    run_attack,
)

# autoattack runs thousands of passes per robust image (minutes on 2 CPU cores): it is
# checked by test_autoattack_is_registered_as_linf, not run here
ATTACKS = [a for a in list_attacks() if a != "autoattack"]
RANDOM_START = [a for a in ATTACKS if a != "fgsm"]
# a budget that flips most of the fixed model's decisions, per threat model
STRONG_EPS = {"linf": 8 / 255, "l2": 1.0}


class _Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


def _model() -> nn.Module:
    """A fixed random CNN with dropout: train mode would make its outputs random."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(_Normalize(), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.5),
                          nn.Linear(128, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    """(model, images (12, 3, 32, 32) float32 in [0, 1], labels = the model's clean
    predictions): clean accuracy is 1 by construction."""
    model = _model()
    imgs, _ = render_arrays(11, 0, 12, size=32)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255).contiguous()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_lowers_accuracy(batch, name):
    model, x, y = batch
    adv = run_attack(model, x, y, name=name, eps=STRONG_EPS[attack_norm(name)], steps=5)
    assert _accuracy(model, x, y) == 1.0
    assert _accuracy(model, adv, y) <= 0.5


@pytest.mark.parametrize(("name", "eps"), [(a, e) for a in ATTACKS
                                           for e in default_epsilons(a) if e > 0])
def test_perturbation_within_eps_and_pixels_in_range(batch, name, eps):
    model, x, y = batch
    adv = run_attack(model, x, y, name=name, eps=eps, steps=3)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    norms = delta.abs().amax(1) if attack_norm(name) == "linf" else delta.norm(dim=1)
    assert (norms <= eps + 1e-6).all(), norms.max()
    assert norms.max() > eps / 2  # the budget is used, not ignored


@pytest.mark.parametrize("name", ATTACKS)
def test_eps_zero_returns_inputs_without_running(batch, name):
    model, x, y = batch
    counting = _Counting(model)
    adv = run_attack(counting, x, y, name=name, eps=0.0)
    assert torch.equal(adv, x) and adv is not x
    assert counting.calls == 0


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", ATTACKS)
def test_model_mode_and_requires_grad_restored(batch, name, training):
    model, x, y = batch
    m = _model()
    m[1].weight.requires_grad_(False)  # a partly frozen model: flags must come back as given
    flags = [p.requires_grad for p in m.parameters()]
    m.train(training)
    adv = run_attack(m, x, y, name=name, eps=4 / 255, steps=3, seed=1)
    assert m.training is training
    assert all(mod.training is training for mod in m.modules())
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())
    # the attack ran in eval mode (no dropout): same result as from an eval-mode model
    expected = run_attack(model, x, y, name=name, eps=4 / 255, steps=3, seed=1)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ATTACKS)
def test_deterministic_with_seed(batch, name):
    model, x, y = batch
    eps = STRONG_EPS[attack_norm(name)] / 2
    a = run_attack(model, x, y, name=name, eps=eps, steps=3, seed=5)
    b = run_attack(model, x, y, name=name, eps=eps, steps=3, seed=5)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", RANDOM_START)
def test_seed_changes_random_start(batch, name):
    model, x, y = batch
    eps = STRONG_EPS[attack_norm(name)] / 2
    a = run_attack(model, x, y, name=name, eps=eps, steps=3, seed=5)
    assert not torch.equal(a, run_attack(model, x, y, name=name, eps=eps, steps=3, seed=6))


@pytest.mark.parametrize("name", ATTACKS)
def test_global_torch_rng_untouched(batch, name):
    model, x, y = batch
    state = torch.get_rng_state()
    run_attack(model, x, y, name=name, eps=2 / 255, steps=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_alpha_is_used(batch):
    model, x, y = batch
    tiny = run_attack(model, x, y, name="pgd", eps=8 / 255, steps=1, alpha=1e-4, seed=0)
    big = run_attack(model, x, y, name="pgd", eps=8 / 255, steps=1, seed=0)
    assert not torch.equal(tiny, big)


def test_channels_last_batch_is_accepted(batch):
    model, x, y = batch
    permuted = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # non-contiguous view
    adv = run_attack(model, permuted, y, name="pgd_l2", eps=0.5, steps=2)
    assert adv.shape == x.shape


def test_default_epsilons():
    assert DEFAULT_EPSILONS == (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    assert default_epsilons("pgd") == DEFAULT_EPSILONS
    assert default_epsilons("pgd_l2")[0] == 0.0 and max(default_epsilons("pgd_l2")) > 8 / 255


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "cw"}, "attack 'cw' unknown; expected one of autoattack, fgsm, pgd, pgd_l2"),
    ({"eps": -0.1}, "expected >= 0"),
    ({"steps": 0}, "steps .* expected >= 1"),
    ({"alpha": 0.0}, "alpha .* expected > 0"),
    ({"images": "uint8"}, "expected float32"),
    ({"images": "0-255"}, r"expected pixels in \[0, 1\]"),
    ({"images": "nhwc"}, r"expected a \(N, 3, H, W\)"),
    ({"labels": "short"}, "labels .* one per image"),
])
def test_bad_arguments_raise(batch, kwargs, match):
    model, x, y = batch
    args = {"name": "pgd", "eps": 2 / 255, "images": x, "labels": y}
    args.update(kwargs)
    images = {"uint8": (x * 255).to(torch.uint8), "0-255": x * 255,
              "nhwc": x.permute(0, 2, 3, 1)}.get(kwargs.get("images"), x)
    labels = y[:-1] if kwargs.get("labels") == "short" else y
    args.update(images=images, labels=labels)
    with pytest.raises(ValueError, match=match):
        run_attack(model, args.pop("images"), args.pop("labels"), **args)


def test_autoattack_is_registered_as_linf():
    assert "autoattack" in list_attacks()
    assert attack_norm("autoattack") == "linf"
    assert default_epsilons("autoattack") == DEFAULT_EPSILONS
