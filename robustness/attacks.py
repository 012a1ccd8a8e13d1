"""White-box adversarial attacks (through torchattacks) with pixel-unit epsilons.

The model has its normalization inside: it maps ``(N, 3, H, W)`` float32 pixels in [0, 1] to
logits, so ``eps`` is in pixel units (``8/255`` is eight grey levels) and adversarial images
stay in [0, 1].

| attack   | threat model | torchattacks | eps means                                      |
|----------|--------------|--------------|------------------------------------------------|
| fgsm     | L-inf        | ``FGSM``     | max per-pixel change; one signed-gradient step |
| pgd      | L-inf        | ``PGD``      | max per-pixel change; random start, ``steps``  |
| pgd_l2   | L2           | ``PGDL2``    | L2 norm of the change over one whole image     |
| autoattack | L-inf      | ``AutoAttack`` | max per-pixel change; RobustBench's standard |
|          |              | (standard)   | ensemble, opt-in (in no built-in suite)        |

**autoattack** (Croce & Hein 2020, torchattacks' port, ``version="standard"``) runs, on the
images still classified correctly after the previous stage: APGD-CE, APGD-T (against each of
the 9 most likely other classes), FAB-T (same targets) and Square (5,000 queries, no
gradients), with the reference code's settings (fra31/auto-attack ``set_version``): 100
iterations per APGD/FAB run and Square's unrescaled schedule. torchattacks' own defaults are
weaker and, for many classes, far slower: 10 iterations, and ``n_classes - 1`` targets (a
1000-class model would get 999 APGD-T and 999 FAB-T runs per image, 111x the reference's 9).
Models with fewer than 10 classes get ``classes - 1`` targets; fewer than 4 classes are
refused (APGD-T's loss reads the 4 largest logits). ``steps`` and ``alpha`` are ignored (each
stage sets its own), ``seed`` seeds every stage.

Cost per image is a count of passes through the model, which does not depend on the machine
(``benchmarks/autoattack_cost.py`` counts them on ``demo_cnn``, 8 classes; the seconds they
took on this project's machine are in docs/performance.md):

| attack (eps)                       | gradient passes | forward passes |
|------------------------------------|-----------------|----------------|
| fgsm (8/255)                       | 1               | 0              |
| pgd, 10 steps (8/255)              | 10              | 0              |
| autoattack, image falls in APGD-CE | 102             | 1.5            |
| autoattack, robust image           | 1,510           | 5,737          |

The robust-image row is an image that survives every stage (eps = 1e-4/255): APGD-CE 101
gradient passes, APGD-T 7 x 101, FAB-T 7 x 100 (+ 722 forward), Square 5,003 forward; a model
with 10 or more classes runs 9 targets, about 1,900 gradient and 5,950 forward passes. An
audit's cost is therefore set by how many images the model classifies robustly: run it on a
GPU and on a few hundred images, as RobustBench does (its leaderboard uses 1,000-5,000). Keep
torch to one thread per busy core: over thousands of tiny passes torch's threads spin-wait on
each other on a busy machine. The audit's actors run as many threads as their Ray CPUs
(``cluster/predictor.py``). "Gradient passes" above are forwards whose input requires a
gradient (each stage's final check adds one without a backward).

Step size: ``alpha = 2.5 * eps / steps`` unless given (Madry et al.'s rule: enough to cross
the eps-ball and back once). The attack runs with the model in eval mode (batch-norm running
statistics, no dropout), parameters frozen; the model's training flag and its parameters'
``requires_grad`` are restored afterwards. PGD's random start draws from a torch generator
seeded with ``seed`` inside :func:`torch.random.fork_rng`, so a run is reproducible and the
caller's global RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torchattacks
from torch import nn

DEFAULT_EPSILONS: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
# L2 sweep for pgd_l2, in pixel units over a whole (3, H, W) image. RobustBench's L2 budgets
# are 0.5 for CIFAR-10 (32 px) and 3.0 for ImageNet (224 px); the L2 size of a fixed per-pixel
# change grows with sqrt(3 * H * W), so at our 64 px demo size 0.5 is mild and 2.0 strong.
DEFAULT_L2_EPSILONS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)

# AutoAttack "standard" as in Croce & Hein's reference code (fra31/auto-attack, set_version):
# 100 iterations per APGD/FAB run, 9 target classes for APGD-T and FAB-T, Square 5,000 queries
AUTOATTACK_STEPS = 100
AUTOATTACK_TARGETS = 9
AUTOATTACK_MIN_CLASSES = 4

_ATTACKS = {"fgsm": torchattacks.FGSM, "pgd": torchattacks.PGD, "pgd_l2": torchattacks.PGDL2,
            "autoattack": torchattacks.AutoAttack}
_NORM = {"fgsm": "linf", "pgd": "linf", "pgd_l2": "l2", "autoattack": "linf"}


def list_attacks() -> list[str]:
    """Attack names accepted by :func:`run_attack`.

    >>> list_attacks()
    ['autoattack', 'fgsm', 'pgd', 'pgd_l2']
    """
    return sorted(_ATTACKS)


def attack_norm(name: str) -> str:
    """``"linf"`` or ``"l2"``: the norm the attack's ``eps`` bounds."""
    _check_name(name)
    return _NORM[name]


def default_epsilons(name: str) -> tuple[float, ...]:
    """The default eps sweep for ``name``: :data:`DEFAULT_EPSILONS`, or the L2 sweep."""
    return DEFAULT_L2_EPSILONS if attack_norm(name) == "l2" else DEFAULT_EPSILONS


def _check_name(name: str) -> None:
    if name not in _ATTACKS:
        raise ValueError(f"attack {name!r} unknown; expected one of {', '.join(list_attacks())}")


def default_alpha(eps: float, steps: int) -> float:
    """Madry's step size ``2.5 * eps / steps``.

    >>> round(default_alpha(8 / 255, 10), 6)
    0.007843
    """
    return 2.5 * eps / steps


def run_attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, name: str,
               eps: float, steps: int = 10, alpha: float | None = None,
               seed: int = 0) -> torch.Tensor:
    """Adversarial versions of ``images`` against ``model``.

    Args:
        model: Maps ``(N, 3, H, W)`` float32 in [0, 1] to ``(N, classes)`` logits
            (normalization inside). Its training flag and ``requires_grad`` are restored.
        images: ``(N, 3, H, W)`` float32 in [0, 1], on the model's device.
        labels: ``(N,)`` int64 true labels; the attack maximizes their cross-entropy.
        name: One of :func:`list_attacks`.
        eps: Perturbation budget in pixel units (L-inf for ``fgsm``/``pgd``, L2 for
            ``pgd_l2``). ``0`` returns a copy of ``images`` without running the model.
        steps: Iterations for ``pgd``/``pgd_l2`` (ignored by ``fgsm``).
        alpha: Step size; default :func:`default_alpha`.
        seed: Seeds the random start of ``pgd``/``pgd_l2``.

    Returns:
        ``(N, 3, H, W)`` float32 in [0, 1], detached, within ``eps`` of ``images``.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    >>> x = torch.full((2, 3, 4, 4), 0.5)
    >>> adv = run_attack(model, x, torch.tensor([0, 1]), name="fgsm", eps=2 / 255)
    >>> bool((adv - x).abs().max() <= 2 / 255 + 1e-6)
    True
    """
    check_attack_inputs(name, images, labels, eps=eps, steps=steps, alpha=alpha)
    if eps == 0 or images.shape[0] == 0:
        return images.detach().clone()

    step = default_alpha(eps, steps) if alpha is None else float(alpha)
    # fork every CUDA device's generator: torch.manual_seed below seeds them all
    devices = list(range(torch.cuda.device_count())) if images.device.type == "cuda" else []
    with frozen(model):
        atk = _make_attack(model, images, name, eps=eps, steps=steps, alpha=step, seed=seed)
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(seed)  # PGD's random start uses the global generator
            # PGDL2 reshapes with .view(): a permuted (channels-last) batch would raise
            adv = atk(images.contiguous(), labels.to(images.device))  # (N, 3, H, W) in [0, 1]
    return adv.detach()


def check_attack_inputs(name: str, images, labels, *, eps: float, steps: int, alpha: float | None) -> None:
    """Raise ``ValueError`` naming what is wrong with an attack's arguments (see
    :func:`run_attack`)."""
    _check_name(name)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"images for attack {name!r} have shape {shape}; expected a "
                         "(N, 3, H, W) float tensor in [0, 1]")
    if images.dtype != torch.float32:
        raise ValueError(f"images for attack {name!r} are {images.dtype}; expected float32 "
                         "in [0, 1] (divide uint8 by 255)")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"images for attack {name!r} range over [{images.min():.3g}, "
                         f"{images.max():.3g}]; expected pixels in [0, 1] with normalization "
                         "inside the model")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels for attack {name!r} have shape {tuple(labels.shape)}; "
                         f"expected ({images.shape[0]},), one per image")
    if not eps >= 0:
        raise ValueError(f"eps for attack {name!r} is {eps}; expected >= 0 (pixel units)")
    if steps < 1:
        raise ValueError(f"steps for attack {name!r} is {steps}; expected >= 1")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha for attack {name!r} is {alpha}; expected > 0 or None")


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode with its parameters' ``requires_grad`` off (only the input's
    gradient is needed); both restored on exit."""
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(model.parameters(), grad_flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def _make_attack(model: nn.Module, images: torch.Tensor, name: str, *, eps: float, steps: int,
                 alpha: float, seed: int) -> torchattacks.attack.Attack:
    """The torchattacks object for ``name`` (``model`` already in eval mode)."""
    if name == "fgsm":
        atk = torchattacks.FGSM(model, eps=eps)
    elif name == "pgd":
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    elif name == "pgd_l2":
        atk = torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    else:
        with torch.no_grad():
            n_classes = int(model(images[:1].contiguous()).shape[1])
        if n_classes < AUTOATTACK_MIN_CLASSES:
            raise ValueError(f"attack 'autoattack' needs a model with at least "
                             f"{AUTOATTACK_MIN_CLASSES} classes (APGD-T's loss compares the "
                             f"top 4 logits); this model has {n_classes}: use pgd instead")
        # torchattacks runs n_classes - 1 targeted passes in APGD-T and FAB-T; the reference
        # targets the 9 most likely other classes only (1000 classes: 999 passes each, 111x)
        atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                      n_classes=min(n_classes, AUTOATTACK_TARGETS + 1),
                                      seed=seed)
        for sub in atk._autoattack.attacks:
            sub.set_device(images.device)  # each stage took the device from the model too
            if isinstance(sub, torchattacks.Square):
                sub.rescale_schedule = False  # the reference's Square schedule
            else:
                sub.steps = AUTOATTACK_STEPS  # APGD-CE, APGD-T, FAB-T: torchattacks' default is 10
    # torchattacks takes the device from the first parameter (None for a parameter-free model)
    atk.set_device(images.device)
    return atk
