"""An attack at every budget of a suite, as an audit runs it: accuracy under attack for the
work its answer needs.

An audit reports, per attack and budget, the share of images the model still classifies
correctly under attack. Under RobustBench's rule an image counts as robust at a budget only if
no perturbation the attack tried within that budget changed its prediction to a wrong class
(an attack "succeeds" on an image as soon as one of its iterates is misclassified). Four
consequences of that rule save most of an undefended model's attack time and change no answer
under it (``early_stop=True``, the default of every suite attack):

| rule | skipped work |
|------|--------------|
| an image the model gets wrong clean is its own adversarial example (the zero perturbation is within every budget): it is not attacked | every pass on it |
| ``pgd`` / ``pgd_l2`` stop on an image at its first misclassified iterate (that iterate is kept: within the budget, in [0, 1]) | its remaining steps |
| budgets run smallest first; an example found within a smaller budget lies within every larger one of the same norm and is kept for them | larger budgets on images already fooled |
| ``fgsm``'s gradient at the clean image is the same at every budget: it is taken once | ``len(eps) - 1`` gradient passes per image |

An image's iterates are those of torchattacks' update (the same random start, step, projection
and clipping; its loss gradient does not depend on the other images of the batch, the model
being in eval mode), so with no image fooled the sweep returns torchattacks' images exactly.
Robust accuracy under the rule is at most torchattacks' own (which keeps the last iterate even
where an earlier one was misclassified, and attacks each budget afresh), and falls with the
budget. ``early_stop=False`` runs each budget through torchattacks as
:func:`~ironsight.robustness.attacks.run_attack` does, every image, every iterate: the numbers
of a hand-written torchattacks loop. ``autoattack`` is an ensemble that already attacks only
the images its earlier stages left correct: the sweep applies the first and third rules
around it.

Cost, counted in passes through the model on this project's benchmark workload
(``benchmarks/audit_vs_handwritten.py``) is in docs/performance.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from ironsight.robustness.attacks import (
    attack_norm,
    check_attack_inputs,
    default_alpha,
    frozen,
    run_attack,
)


class AttackOutcome(NamedTuple):
    """One budget's result for a batch (tensors on the images' device)."""

    eps: float
    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]: the example kept per image
    predictions: torch.Tensor  # (N,) int64: the model's class for that example
    confidences: torch.Tensor  # (N,) float32: its softmax probability


def predict(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes, softmax confidences) of ``images`` under ``inference_mode``."""
    with torch.inference_mode():
        conf, pred = torch.softmax(model(images).float(), dim=1).max(dim=1)
    return pred.clone(), conf.clone()


def attack_sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    name: str,
    eps: Sequence[float],
    steps: int = 10,
    alpha: float | None = None,
    seed: int = 0,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
    early_stop: bool = True,
) -> Iterator[AttackOutcome]:
    """``name`` at each budget in ``eps``, smallest first (see the module docstring).

    Args:
        model: ``(N, 3, H, W)`` float32 in [0, 1] -> logits (normalization inside); its
            training flag and parameters' ``requires_grad`` are restored after each budget.
        images: ``(N, 3, H, W)`` float32 in [0, 1] on the model's device (any memory format:
            the attack's iterates keep it; random starts are drawn in NCHW order, so a
            channels-last batch gets the same starts).
        labels: ``(N,)`` int64 true classes.
        name, steps, alpha, seed: as :func:`~ironsight.robustness.attacks.run_attack`
            (``alpha`` default: ``2.5 * eps / steps`` for each eps).
        eps: the budgets (pixel units; L2 for ``pgd_l2``); duplicates run once.
        clean: the model's ``(classes, confidences)`` on ``images``, if already known (an
            audit has them); else predicted here. Budget 0 returns them.
        early_stop: RobustBench's rule and the savings above; False: torchattacks' final
            iterate of every image at every budget.

    Yields:
        one :class:`AttackOutcome` per distinct budget, in increasing order.

    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    >>> x = torch.rand(4, 3, 4, 4)
    >>> y = torch.tensor([0, 1, 0, 1])
    >>> [round(o.eps, 4) for o in attack_sweep(model, x, y, name="pgd", eps=[8 / 255, 0.0, 2 / 255])]
    [0.0, 0.0078, 0.0314]
    """
    budgets = sorted({float(e) for e in eps})
    if budgets:  # the images scanned once; the budget checked is the first bad one, if any
        bad = next((e for e in budgets if not e >= 0), budgets[0])
        check_attack_inputs(name, images, labels, eps=bad, steps=steps, alpha=alpha)
    labels = labels.to(images.device)
    pred, conf = clean if clean is not None else predict(model, images)
    pred, conf = pred.to(images.device).clone(), conf.to(images.device).clone()
    if not early_stop:
        for e in budgets:
            adv = run_attack(model, images, labels, name=name, eps=e, steps=steps, alpha=alpha, seed=seed)
            yield AttackOutcome(e, adv, *((pred, conf) if e == 0 else predict(model, adv)))
        return
    best = images.detach().clone()
    fooled = pred != labels  # wrong clean: the zero perturbation is their example at every budget
    fgsm_grad = None
    for e in budgets:
        todo = torch.nonzero(~fooled).flatten()
        if e > 0 and len(todo):
            if name == "fgsm":
                if fgsm_grad is None:  # at the clean image: the same for every budget
                    fgsm_grad = torch.zeros_like(images)
                    fgsm_grad[todo] = _input_grad(model, images[todo], labels[todo])
                adv = (images[todo] + e * fgsm_grad[todo].sign()).clamp_(0, 1)
                p, c = predict(model, adv)
            elif name in ("pgd", "pgd_l2"):
                adv, p, c = _pgd(model, images, labels, todo, name=name, eps=e, steps=steps,
                                 alpha=default_alpha(e, steps) if alpha is None else float(alpha), seed=seed)
            else:
                adv = run_attack(model, images[todo], labels[todo], name=name, eps=e, steps=steps,
                                 alpha=alpha, seed=seed)
                p, c = predict(model, adv)
            best[todo], pred[todo], conf[todo] = adv.to(best.dtype), p, c
            fooled[todo] = p != labels[todo]
        yield AttackOutcome(e, best.clone(), pred.clone(), conf.clone())


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(mean cross-entropy)/dx, the model frozen (torchattacks' FGSM gradient)."""
    with frozen(model), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]


def _random_start(images: torch.Tensor, name: str, eps: float, seed: int) -> torch.Tensor:
    """torchattacks' random start for the whole batch, drawn in NCHW order from a generator
    seeded with ``seed`` (the draws :func:`run_attack` makes from the seeded global one)."""
    gen = torch.Generator(device=images.device).manual_seed(seed)
    shape, n = images.shape, images.shape[0]
    if name == "pgd":
        return torch.empty(shape, device=images.device).uniform_(-eps, eps, generator=gen)
    delta = torch.empty(shape, device=images.device).normal_(generator=gen)
    norm = delta.reshape(n, -1).norm(p=2, dim=1).view(n, 1, 1, 1)
    r = torch.zeros_like(norm).uniform_(0, 1, generator=gen)
    return delta * (r / norm * eps)


def _pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, todo: torch.Tensor, *, name: str,
         eps: float, steps: int, alpha: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD (L-inf or L2, torchattacks' update) on ``images[todo]``, each image stopped at its
    first misclassified iterate; returns the kept iterates, their classes and confidences."""
    fmt = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    x0, y = images[todo].contiguous(memory_format=fmt), labels[todo]
    start = _random_start(images, name, eps, seed)[todo].contiguous(memory_format=fmt)
    adv = (x0 + start).clamp_(0, 1)
    pred = torch.empty(len(todo), dtype=torch.int64, device=images.device)
    conf = torch.empty(len(todo), dtype=torch.float32, device=images.device)
    active = torch.arange(len(todo), device=images.device)  # places in todo still correct
    with frozen(model), torch.enable_grad():
        for _ in range(steps):
            a = adv[active].detach().requires_grad_(True)
            logits = model(a)
            wrong = logits.argmax(1) != y[active]
            if wrong.any():  # fooled at this iterate: kept as it is
                c, p = torch.softmax(logits[wrong].detach().float(), dim=1).max(dim=1)
                pred[active[wrong]], conf[active[wrong]] = p, c
                keep = ~wrong
                if not keep.any():
                    active = active[keep]
                    break
                loss = F.cross_entropy(logits[keep], y[active[keep]])
                grad = torch.autograd.grad(loss, a)[0][keep]
                active, a = active[keep], a.detach()[keep]
            else:
                grad = torch.autograd.grad(F.cross_entropy(logits, y[active]), a)[0]
                a = a.detach()
            adv[active] = _step(a, grad, x0[active], name=name, eps=eps, alpha=alpha)
    if len(active):  # never fooled along the way: the last iterate, predicted
        pred[active], conf[active] = predict(model, adv[active])
    return adv, pred, conf


def _step(a: torch.Tensor, grad: torch.Tensor, x0: torch.Tensor, *, name: str, eps: float,
          alpha: float) -> torch.Tensor:
    """One torchattacks PGD update of iterates ``a`` from clean ``x0``: the signed step and
    the L-inf box (``pgd``), or the normalized step and the L2 ball (``pgd_l2``); then [0, 1]."""
    if attack_norm(name) == "linf":
        delta = torch.clamp(a + alpha * grad.sign() - x0, min=-eps, max=eps)
        return torch.clamp(x0 + delta, min=0, max=1)
    n = len(a)
    grad = grad / (grad.reshape(n, -1).norm(p=2, dim=1) + 1e-10).view(n, 1, 1, 1)  # torchattacks' eps_for_division
    delta = a + alpha * grad - x0
    factor = torch.clamp(eps / delta.reshape(n, -1).norm(p=2, dim=1), max=1.0)
    return torch.clamp(x0 + delta * factor.view(-1, 1, 1, 1), min=0, max=1)
