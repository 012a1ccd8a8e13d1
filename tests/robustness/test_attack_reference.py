"""Ironsight's attacks against a second implementation, on a model that really classifies.

FGSM and PGD go through :func:`ironsight.robustness.attacks.run_attack` with the arguments
the audit passes (``jobs/audit.py``: ``steps``, ``alpha=None`` -> Madry's step size, ``seed``)
and through Foolbox 3 (``FGSM``, ``LinfPGD`` with the same eps, steps and absolute step
size). Both start PGD at a random point of the eps-ball from their own random generator, so
the robust accuracies may differ on a few borderline images: they must agree within
:data:`TOLERANCE` on :data:`N_EVAL` images.

The model is a small MLP (normalization inside, pixels in [0, 1]) trained in a few seconds
on a task built to behave like an image classifier under L-inf attacks: each of 4 classes is
a +-``DELTA`` sign pattern around grey over 3 x 8 x 8 pixels, plus Gaussian noise. Held-out
accuracy is about 95%; a change of ``eps`` per pixel along the sign pattern costs about 10
points at 4/255 and 40 at 8/255, so both budgets land where the attacks' details matter.

AutoAttack (``name="autoattack"``) is run on a few images of the same model: its robust
accuracy is at most the clean one and at most 10-step PGD's, its images stay in the eps-ball.
"""

from __future__ import annotations

import foolbox
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ironsight.robustness.attacks import (
    AUTOATTACK_STEPS,
    AUTOATTACK_TARGETS,
    _make_attack,
    default_alpha,
    run_attack,
)

N_CLASSES = 4
SIZE = 8
DELTA = 0.06  # per-pixel offset of a class pattern from grey (about 15/255)
SIGMA = 0.25  # pixel noise
N_TRAIN = 2000
N_EVAL = 400
STEPS = 10  # the suites' default (robustness.suites.AttackSpec.steps)
EPSILONS = (4 / 255, 8 / 255)
TOLERANCE = 0.01  # one point of robust accuracy
MIN_CLEAN = 0.80


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.25


def _patterns() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (N_CLASSES, 3, SIZE, SIZE), generator=gen) * 2 - 1
    return 0.5 + DELTA * signs  # (4, 3, 8, 8) in [0.44, 0.56]


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, 8, 8)`` float32 in [0, 1] and their labels ``(n,)``."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=gen)
    x = _patterns()[y] + SIGMA * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    return x.clamp(0, 1).contiguous(), y


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors, many passes: 2 threads on a busy shared CPU spin-wait on each other
    (AutoAttack ran 20x slower than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread):
    """(model in eval mode, held-out images (400, 3, 8, 8) in [0, 1], their true labels)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(_Normalize(), nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 32),
                              nn.ReLU(), nn.Linear(32, N_CLASSES))
    x_train, y_train = _data(N_TRAIN, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # full batch
        loss = F.cross_entropy(model(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = _data(N_EVAL, seed=2)  # held out: another seed
    return model, x, y


def test_model_classifies(trained):
    model, x, y = trained
    assert _accuracy(model, x, y) >= MIN_CLEAN


def _foolbox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str,
             eps: float) -> torch.Tensor:
    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    if name == "fgsm":
        attack = foolbox.attacks.FGSM()
    else:
        attack = foolbox.attacks.LinfPGD(abs_stepsize=default_alpha(eps, STEPS), steps=STEPS,
                                         random_start=True)
    torch.manual_seed(0)  # LinfPGD's random start (conftest restores the global state)
    _, clipped, _ = attack(fmodel, x, y, epsilons=eps)
    return clipped


@pytest.mark.parametrize("eps", EPSILONS, ids=lambda e: f"{round(e * 255)}/255")
@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_robust_accuracy_matches_foolbox(trained, name, eps):
    model, x, y = trained
    clean = _accuracy(model, x, y)
    ours = run_attack(model, x, y, name=name, eps=eps, steps=STEPS, alpha=None, seed=0)
    theirs = _foolbox(model, x, y, name, eps)
    for adv in (ours, theirs):
        assert adv.min() >= 0 and adv.max() <= 1
        assert (adv - x).abs().max() <= eps + 1e-6
    acc_ours, acc_theirs = _accuracy(model, ours, y), _accuracy(model, theirs, y)
    assert clean >= MIN_CLEAN
    assert acc_ours <= clean - 0.05, "the attack barely bites: the comparison would be vacuous"
    assert abs(acc_ours - acc_theirs) <= TOLERANCE, (name, eps, clean, acc_ours, acc_theirs)


def test_pgd_at_least_as_strong_as_fgsm(trained):
    model, x, y = trained
    eps = EPSILONS[-1]
    fgsm = _accuracy(model, run_attack(model, x, y, name="fgsm", eps=eps), y)
    pgd = _accuracy(model, run_attack(model, x, y, name="pgd", eps=eps, steps=STEPS), y)
    assert pgd <= fgsm


def test_autoattack_on_a_few_images(trained):
    model, x, y = trained
    x, y = x[:8], y[:8]
    eps = 8 / 255
    adv = run_attack(model, x, y, name="autoattack", eps=eps, seed=0)
    pgd = run_attack(model, x, y, name="pgd", eps=eps, steps=STEPS, seed=0)
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= eps + 1e-6
    clean, robust = _accuracy(model, x, y), _accuracy(model, adv, y)
    assert robust < clean  # at 8/255 at least one of these 8 images falls
    assert robust <= _accuracy(model, pgd, y)


def test_autoattack_uses_the_reference_settings():
    """9 target classes (not n_classes - 1), 100 iterations, Square's unrescaled schedule."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 50))  # 50 classes
    x = torch.full((1, 3, 4, 4), 0.5)
    atk = _make_attack(model, x, "autoattack", eps=4 / 255, steps=10, alpha=0.1, seed=3)
    apgd, apgdt, fab, square = atk._autoattack.attacks
    assert apgdt.n_target_classes == fab.n_target_classes == AUTOATTACK_TARGETS
    assert apgd.steps == apgdt.steps == fab.steps == AUTOATTACK_STEPS
    assert fab.multi_targeted and square.n_queries == 5000 and not square.rescale_schedule
    assert {a.seed for a in (apgd, apgdt, fab, square)} == {3}
    assert {a.device for a in (atk, apgd, apgdt, fab, square)} == {x.device}


def test_autoattack_refuses_fewer_than_four_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.full((2, 3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="at least 4 classes.*has 3"):
        run_attack(model, x, torch.tensor([0, 1]), name="autoattack", eps=4 / 255)
