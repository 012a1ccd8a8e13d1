"""attack_sweep: torchattacks' iterates exactly where nothing is fooled, RobustBench's rule
where something is, and the passes it skips (counted)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ironsight.cluster.synthetic import render_arrays
from ironsight.robustness.attack_sweep import attack_sweep, predict
from ironsight.robustness.attacks import attack_norm, run_attack
from tests.robustness.test_attacks import STRONG_EPS, _Counting, _model

LOOPS = ["fgsm", "pgd", "pgd_l2"]  # the sweep's own loops (autoattack goes through run_attack)


@pytest.fixture(scope="module")
def batch():
    """(model, images (16, 3, 32, 32), labels): the model's clean predictions, except the
    last 4 labels shifted by one class (wrong clean)."""
    model = _model()
    imgs, _ = render_arrays(12, 0, 16, size=32)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(255).contiguous()
    with torch.no_grad():
        y = model(x).argmax(1)
    y[12:] = (y[12:] + 1) % 8
    return model, x, y


def _budgets(name: str) -> list[float]:
    strong = STRONG_EPS[attack_norm(name)]
    return [0.0, strong / 8, strong / 2, strong]


@pytest.mark.parametrize("name", LOOPS)
def test_same_images_as_torchattacks_when_nothing_is_fooled(batch, name):
    model, x, y = batch
    x, y = x[:12], y[:12]  # all correct clean
    tiny = 1e-4 if attack_norm(name) == "linf" else 1e-3
    (out,) = attack_sweep(model, x, y, name=name, eps=[tiny], steps=5, seed=3)
    assert bool((out.predictions == y).all())  # nothing fooled: every image ran every step
    ref = run_attack(model, x, y, name=name, eps=tiny, steps=5, seed=3)
    assert torch.equal(out.images, ref)


@pytest.mark.parametrize("name", LOOPS)
def test_early_stop_is_at_least_as_strong_and_monotone(batch, name):
    model, x, y = batch
    fast = list(attack_sweep(model, x, y, name=name, eps=_budgets(name), steps=5, seed=1))
    full = list(attack_sweep(model, x, y, name=name, eps=_budgets(name), steps=5, seed=1, early_stop=False))
    acc = [float((o.predictions == y).float().mean()) for o in fast]
    ref = [float((o.predictions == y).float().mean()) for o in full]
    assert acc == sorted(acc, reverse=True)  # robust accuracy falls with the budget
    assert all(a <= r + 1e-9 for a, r in zip(acc, ref, strict=True)), (acc, ref)
    assert acc[0] == 0.75 and acc[-1] < 0.75  # clean: 12 of 16; the strong budget fools some


@pytest.mark.parametrize("name", LOOPS)
def test_kept_examples_are_valid_and_their_predictions_true(batch, name):
    model, x, y = batch
    for out in attack_sweep(model, x, y, name=name, eps=_budgets(name), steps=5):
        delta = (out.images - x).flatten(1)
        size = delta.abs().amax(1) if attack_norm(name) == "linf" else delta.norm(dim=1)
        assert bool((size <= out.eps + 1e-5).all())
        assert out.images.min() >= 0 and out.images.max() <= 1
        pred, conf = predict(model, out.images)
        assert torch.equal(pred, out.predictions)
        assert torch.allclose(conf, out.confidences, atol=1e-5)
        # wrong clean: not attacked, the clean image and prediction kept
        assert torch.equal(out.images[12:], x[12:])
        assert bool((out.predictions[12:] != y[12:]).all())


def test_nothing_runs_on_images_wrong_clean(batch):
    model, x, y = batch
    counting = _Counting(model)
    clean = predict(model, x[12:])
    outs = list(attack_sweep(counting, x[12:], y[12:], name="pgd", eps=[0.0, 8 / 255], clean=clean))
    assert counting.calls == 0
    assert torch.equal(outs[1].predictions, clean[0])


class _GradCounting(nn.Module):
    """Counts forward passes with and without a gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.grad, self.plain = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.grad += 1
        else:
            self.plain += 1
        return self.inner(x)


def test_fgsm_takes_one_gradient_for_every_budget(batch):
    model, x, y = batch
    budgets = [1 / 255, 2 / 255, 4 / 255, 8 / 255]
    counting = _GradCounting(model)
    list(attack_sweep(counting, x, y, name="fgsm", eps=budgets, clean=predict(model, x)))
    assert counting.grad == 1 and 1 <= counting.plain <= len(budgets)
    counting = _GradCounting(model)
    list(attack_sweep(counting, x, y, name="fgsm", eps=budgets, clean=predict(model, x), early_stop=False))
    assert (counting.grad, counting.plain) == (len(budgets), len(budgets))


def test_pgd_stops_on_fooled_images(batch):
    """At a budget that fools every image at its random start or first step, PGD-10 costs a
    pass or two per image, not ten."""
    model, x, y = batch
    counting = _Counting(model)
    seen = []
    counting.forward = lambda a, inner=counting.inner: (seen.append(len(a)), inner(a))[1]
    (out,) = attack_sweep(counting, x, y, name="pgd", eps=[64 / 255], steps=10, clean=predict(model, x))
    assert bool((out.predictions != y).all())
    assert sum(seen) < 10 * 12 / 2, seen  # far fewer image-passes than 10 steps x 12 images


def test_channels_last_batch_gets_the_same_random_start(batch):
    """The starts are drawn in NCHW order whatever the layout: at one step with a tiny alpha
    the kept iterates of both layouts agree to float rounding."""
    model, x, y = batch
    cl = x.contiguous(memory_format=torch.channels_last)
    kw = {"name": "pgd", "eps": [4 / 255], "steps": 1, "alpha": 1e-9, "clean": predict(model, x)}
    (a,) = attack_sweep(model, x, y, **kw)
    (b,) = attack_sweep(model, cl, y, **kw)
    assert b.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a.images, b.images, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_and_requires_grad_restored(batch, training):
    model, x, y = batch
    model.train(training)
    flags = [p.requires_grad for p in model.parameters()]
    try:
        list(attack_sweep(model, x, y, name="pgd", eps=[4 / 255], steps=2))
        assert model.training is training
        assert [p.requires_grad for p in model.parameters()] == flags
    finally:
        model.eval()


def test_bad_budget_named(batch):
    model, x, y = batch
    with pytest.raises(ValueError, match="eps for attack 'pgd' is -0.1"):
        list(attack_sweep(model, x, y, name="pgd", eps=[0.1, -0.1]))


def test_empty_batch_yields_every_budget():
    model = _model()
    x, y = torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.int64)
    assert [o.eps for o in attack_sweep(model, x, y, name="fgsm", eps=[0.0, 0.1])] == [0.0, 0.1]


def test_linear_model_doctest_shape():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    outs = list(attack_sweep(model, torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 0]), name="pgd_l2", eps=[0.5]))
    assert outs[0].images.shape == (3, 3, 4, 4) and outs[0].predictions.dtype == torch.int64
