"""Corruption error (CE) and mCE: against AlexNet's published ImageNet-C errors, or a baseline.

Corruption error follows Hendrycks & Dietterich (2019), "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations": CE_c = sum_s E_{s,c} / sum_s
E^base_{s,c}; relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} -
E^base_clean); mCE is the mean over conditions. Reported as ratios (1.0 = as good as the
baseline), not percentages. Conventions (fractions, ``None`` for undefined) are those of
:mod:`ironsight.robustness.metrics`.

| function                 | baseline                                          |
|--------------------------|---------------------------------------------------|
| :func:`alexnet_mce`      | AlexNet on ImageNet-C (ImageNet-1k models only: :func:`imagenet_mce_reason`) |
| :func:`compare_to_baseline` | a previous ``report.json``                     |
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ironsight.robustness.metrics import mean_corruption_accuracy, mean_defined

# Top-1 error of AlexNet on ImageNet-C per corruption and severity 1..5, the normalizer of
# the published mCE. Values as stored in timm's `imagenetc_alexnet_error_rates_list`
# (huggingface/pytorch-image-models, `timm.utils`, bits_and_tpu branch); their per-corruption
# means equal open-mmlab/mmpretrain `mmcls/evaluation/metrics/corruption_error.py`
# `_get_ce_alexnet()` (e.g. gaussian_noise 0.886428), which Hendrycks & Dietterich published.
ALEXNET_IMAGENET_C_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}

# sha256 of the 1000 ImageNet-1k class names joined by "\n", in logit order, as torchvision's
# weights carry them (``Weights.meta["categories"]``, the registry's zoo models); a test checks
# it against torchvision. A hash keeps torchvision out of report building.
IMAGENET_1K_NAMES_SHA256 = "0b0f9fee7c952f257418d62aa701f023a9da13b443a14f5c4291e5724d92967c"
IMAGENET_1K_CLASSES = 1000


def corruption_errors(
    errors: dict[str, dict[int, float]],
    baseline_errors: dict[str, dict[int, float]],
    clean_error: float | None = None,
    baseline_clean_error: float | None = None,
) -> dict[str, dict[str, float | None]]:
    """Corruption error (CE) and relative CE of each condition against a baseline.

    Severities are matched: only severities present for the condition in both are summed.

    Args:
        errors: ``{condition: {severity: top-1 error}}`` of the model under audit.
        baseline_errors: The same for the baseline model.
        clean_error: Clean error of the model (needed for the relative CE).
        baseline_clean_error: Clean error of the baseline.

    Returns:
        ``{condition: {"ce": float | None, "relative_ce": float | None}}`` for conditions
        present in both; None where a denominator is zero or an input is missing.

    >>> corruption_errors({"fog": {1: 0.2, 2: 0.4}}, {"fog": {1: 0.4, 2: 0.8}}, 0.1, 0.2)
    {'fog': {'ce': 0.5, 'relative_ce': 0.5}}
    """
    out: dict[str, dict[str, float | None]] = {}
    for cond, by_sev in errors.items():
        base = baseline_errors.get(cond)
        if not base:
            continue
        sevs = sorted(set(by_sev) & set(base))
        if not sevs:
            continue
        num = sum(by_sev[s] for s in sevs)
        den = sum(base[s] for s in sevs)
        ce = num / den if den > 0 else None
        rel = None
        if clean_error is not None and baseline_clean_error is not None:
            rel_num = sum(by_sev[s] - clean_error for s in sevs)
            rel_den = sum(base[s] - baseline_clean_error for s in sevs)
            rel = rel_num / rel_den if rel_den > 0 else None
        out[cond] = {"ce": ce, "relative_ce": rel}
    return out


def imagenet_mce_reason(class_names: Sequence[str]) -> str | None:
    """Why mCE against AlexNet does not apply to a model with these classes; None when it does.

    AlexNet's ImageNet-C errors normalize an error on the same 1000 ImageNet-1k labels: the
    ratio means nothing for another label set, even one with 1000 classes.

    >>> imagenet_mce_reason(["circle", "square"])[:60]
    'the model has 2 classes, not the 1000 ImageNet-1k classes: m'
    """
    n = len(class_names)
    if n != IMAGENET_1K_CLASSES:
        return (
            f"the model has {n} classes, not the {IMAGENET_1K_CLASSES} ImageNet-1k classes: "
            f"mCE against AlexNet's published ImageNet-C errors only means something for "
            f"ImageNet-1k labels"
        )
    digest = hashlib.sha256("\n".join(map(str, class_names)).encode("utf-8")).hexdigest()
    if digest != IMAGENET_1K_NAMES_SHA256:
        return (
            f"the model has {n} classes but its class names are not ImageNet-1k's (in "
            f"torchvision's order; first: {', '.join(map(str, class_names[:3]))}): mCE against "
            f"AlexNet's published ImageNet-C errors only means something for ImageNet-1k labels"
        )
    return None


def _registry_imagenet_c(names: Sequence[str]) -> set[str]:
    """The names whose registry tag says ImageNet-C (``Condition.imagenet_c``); names that are
    not registered (a caller's own condition) are not ImageNet-C."""
    from ironsight.robustness import conditions as registry  # torch: imported on first use

    out = set()
    for name in names:
        try:
            if registry.get_condition(name).imagenet_c:
                out.add(name)
        except ValueError:
            continue
    return out


def alexnet_mce(conditions: list[dict], imagenet_c_conditions: Sequence[str] | None = None) -> dict | None:
    """mCE against AlexNet's published ImageNet-C errors, over ImageNet-C conditions only.

    Args:
        conditions: The report's condition x severity entries.
        imagenet_c_conditions: Which names are ImageNet-C's. None (what reports use): the
            conditions whose registry tag says ImageNet-C
            (:attr:`ironsight.robustness.conditions.Condition.imagenet_c`), so the mCE covers
            exactly what ``ironsight conditions list`` tags.

    Only those conditions, at severities 1..5, count; one without a published AlexNet error
    is listed in ``excluded``.

    Returns:
        ``{"mce": float, "ce": {condition: float}, "conditions": [...], "excluded": [...]}``
        or None when no audited condition is an ImageNet-C one.
    """
    audited = {c["name"] for c in conditions}
    if imagenet_c_conditions is None:
        tagged = _registry_imagenet_c(sorted(audited))
    else:
        tagged = set(imagenet_c_conditions)
    allowed = tagged & set(ALEXNET_IMAGENET_C_ERRORS)
    errors: dict[str, dict[int, float]] = {}
    for c in conditions:
        if c["name"] in allowed and 1 <= c["severity"] <= 5 and c["accuracy"] is not None:
            errors.setdefault(c["name"], {})[c["severity"]] = 1.0 - c["accuracy"]
    if not errors:
        return None
    base = {k: dict(enumerate(v, start=1)) for k, v in ALEXNET_IMAGENET_C_ERRORS.items()}
    ces = {k: v["ce"] for k, v in corruption_errors(errors, base).items()}
    return {
        "mce": mean_defined(list(ces.values())),
        "ce": ces,
        "conditions": sorted(ces),
        # tagged ImageNet-C but no published AlexNet error for the name
        "excluded": sorted((audited & tagged) - set(ces)),
    }


def _errors_by_condition(conditions: Sequence[dict]) -> dict[str, dict[int, float]]:
    errors: dict[str, dict[int, float]] = {}
    for c in conditions:
        if c.get("accuracy") is not None:
            errors.setdefault(c["name"], {})[int(c["severity"])] = 1.0 - c["accuracy"]
    return errors


def compare_to_baseline(
    clean_accuracy: float | None, conditions: list[dict], baseline: dict
) -> dict:
    """CE, relative CE, mCE and accuracy changes against a baseline ``report.json``.

    Args:
        clean_accuracy: Clean accuracy of the model under audit.
        conditions: This report's ``conditions`` entries.
        baseline: A previous report (the dict loaded from its ``report.json``).

    Returns:
        ``{"clean_accuracy_change", "per_condition": {name: {"ce", "relative_ce",
        "mean_accuracy", "baseline_mean_accuracy", "accuracy_change"}}, "mce",
        "relative_mce", "missing_in_baseline": [...]}``; changes are this minus baseline.
    """
    base_conditions = baseline.get("conditions") or []
    base_clean = (baseline.get("clean") or {}).get("accuracy")
    errors, base_errors = _errors_by_condition(conditions), _errors_by_condition(base_conditions)
    ces = corruption_errors(
        errors,
        base_errors,
        None if clean_accuracy is None else 1.0 - clean_accuracy,
        None if base_clean is None else 1.0 - base_clean,
    )
    per_condition = {}
    for name in sorted(errors):
        mine = mean_corruption_accuracy([c for c in conditions if c["name"] == name])
        theirs = mean_corruption_accuracy([c for c in base_conditions if c["name"] == name])
        per_condition[name] = {
            "ce": ces.get(name, {}).get("ce"),
            "relative_ce": ces.get(name, {}).get("relative_ce"),
            "mean_accuracy": mine,
            "baseline_mean_accuracy": theirs,
            "accuracy_change": None if mine is None or theirs is None else mine - theirs,
        }
    return {
        "clean_accuracy": base_clean,
        "clean_accuracy_change": (
            None if clean_accuracy is None or base_clean is None else clean_accuracy - base_clean
        ),
        "per_condition": per_condition,
        "mce": mean_defined([v["ce"] for v in ces.values()]),
        "relative_mce": mean_defined([v["relative_ce"] for v in ces.values()]),
        "missing_in_baseline": sorted(set(errors) - set(ces)),
    }
