"""Checking the files a job spec names, and any config file on its own (``ironsight validate``).

| function                        | does                                                        |
|---------------------------------|-------------------------------------------------------------|
| :func:`referenced_file_problems` | load a spec's local card, suite and gate as ``run`` would; list what is wrong |
| :func:`missing_model_files`     | the local weights and card files that do not exist (no torch) |
| :func:`detect_file_kind`        | spec, gate, suite or card, told from a file's keys          |
| :func:`validate_file`           | ``ironsight validate FILE``: check a file as ``run`` would read it |
"""

from __future__ import annotations

import os
from typing import Any

from ironsight.cluster.errors import InvalidInput, close_matches
from ironsight.cluster.yamlfile import MAX_MESSAGE_CHARS, clip, load_yaml
from ironsight.jobs.spec import SPEC_KINDS, AuditJob, ClassifyJob, CompareJob, ModelChoice
from ironsight.jobs.spec_file import load_spec, relative_paths_as_written


def _local(value: str | None) -> bool:
    return bool(value) and ("://" not in value or value.startswith("file://"))


def referenced_file_problems(spec: ClassifyJob | AuditJob, source: str) -> list[str]:
    """Load the local files the spec names, as ``run`` would, and list what is wrong.

    | field        | read by                                   | also checked                    |
    |--------------|-------------------------------------------|---------------------------------|
    | `model_card` | `ironsight.cluster.models.card.load_card` | its local weights file exists   |
    | `suite`      | `ironsight.robustness.suites.get_suite`   | built-in names too (`quik`)     |
    | `gate`       | `ironsight.robustness.gate.load_gate`     |                                 |
    | `weights`    | (not loaded: it may be large)             | a local file exists             |

    ``s3://`` files are not fetched here; ``run`` reads them. Each problem names ``source``,
    the field and the path as resolved (against the spec's folder, with the value as written
    when it was relative).
    """
    if isinstance(spec, CompareJob):
        return _compare_file_problems(spec, source)
    written = relative_paths_as_written(spec)
    problems: list[str] = []

    def where(field: str) -> str:
        rel = written.get(field)
        return f" ({rel!r} is relative to the spec's folder)" if rel else ""

    def check(field: str, load: Any) -> Any:
        value = getattr(spec, field, None)
        if value is None or (field != "suite" and not _local(value)):
            return None
        if field == "suite" and "://" in value and not value.startswith("file://"):
            return None
        try:
            return load(value)
        except InvalidInput as exc:
            problems.append(f"{source}: {field}: {clip(str(exc), MAX_MESSAGE_CHARS)}{where(field)}"
                            f"{_did_you_mean_file(value)}")
        return None

    card = check("model_card", lambda v: _load_card(v))
    if isinstance(spec, AuditJob):
        check("suite", lambda v: _load_suite(v))
        check("gate", lambda v: _load_gate(v))
    weights = [("weights", spec.weights, where("weights"))] if spec.weights else []
    if card is not None:
        weights.append(("model_card", card.weights_uri(), f" (weights named by model card {spec.model_card})"))
    problems += [f"{source}: {field}: {message}" for field, message in _missing(weights)]
    return problems


def _compare_file_problems(spec: CompareJob, source: str) -> list[str]:
    """:func:`referenced_file_problems` of a compare spec: each model's card and weights, the suite."""
    problems: list[str] = []
    for i, choice in enumerate(spec.model_choices()):
        label = f"model {i + 1} ({choice.name or choice.model or choice.model_card})"
        files = [("weights", choice.weights, "")]
        if _local(choice.model_card):
            try:
                card = _load_card(choice.model_card)
                files.append(("model_card", card.weights_uri(), f" (weights named by model card {choice.model_card})"))
            except InvalidInput as exc:
                problems.append(f"{source}: {label}: model_card: {clip(str(exc), MAX_MESSAGE_CHARS)}"
                                f"{_did_you_mean_file(choice.model_card)}")
        problems += [f"{source}: {label}: {field}: {message}" for field, message in _missing(files)]
    if "://" not in spec.suite or spec.suite.startswith("file://"):
        try:
            _load_suite(spec.suite)
        except InvalidInput as exc:
            problems.append(f"{source}: suite: {clip(str(exc), MAX_MESSAGE_CHARS)}")
    return problems


def _missing(files: list[tuple[str, str | None, str]]) -> list[tuple[str, str]]:
    """``(field, message)`` for each local ``(field, uri, note)`` file that does not exist."""
    out = []
    for field, uri, note in files:
        if _local(uri) and not os.path.lexists(uri.removeprefix("file://")):
            what = "model card" if field == "model_card" and not note else "weights file"
            out.append((field, f"{what} {uri} does not exist{note}{_did_you_mean_file(uri)}"))
    return out


def missing_model_files(spec: ModelChoice) -> list[str]:
    """The local ``weights`` and ``model_card`` files the spec names that do not exist, as
    ``--flag: message`` lines; checked without reading them (no torch: the CLI's first checks)."""
    files = [("weights", spec.weights, ""), ("model_card", spec.model_card, "")]
    return [f"--{field.replace('_', '-')} {message}" for field, message in _missing(files)]


def _load_card(value: str) -> Any:
    from ironsight.cluster.models.card import load_card

    return load_card(value)


def _load_suite(value: str) -> Any:
    from ironsight.robustness.suites import get_suite

    return get_suite(value)


def _load_gate(value: str) -> Any:
    from ironsight.robustness.gate import load_gate

    return load_gate(value)


def _did_you_mean_file(path: str) -> str:
    """``; did you mean gate.yaml?`` when a missing local file has a close sibling."""
    local = path.removeprefix("file://")
    if "://" in local or os.path.lexists(local):
        return ""
    folder, name = os.path.split(local)
    try:
        siblings = os.listdir(folder or ".")
    except OSError:
        return ""
    close = close_matches(name, siblings, cutoff=0.7)
    return f"; did you mean {close[0]}?" if close else ""


# --- `ironsight validate`: a spec, gate, suite or model card --------------------------------

FILE_KINDS = ("spec", "gate", "suite", "card")


def _file_kind_keys() -> dict[str, set[str]]:
    from ironsight.cluster.models.card import ModelCard
    from ironsight.robustness.gate import Gate
    from ironsight.robustness.suites import _SuiteModel

    spec_keys = {k for m in SPEC_KINDS.values() for k in m.model_fields}
    return {"spec": spec_keys, "gate": set(Gate.model_fields),
            "suite": set(_SuiteModel.model_fields), "card": set(ModelCard.model_fields)}


def detect_file_kind(data: Any, path: str) -> str:
    """Which kind of file ``data`` (parsed YAML) is: the kind whose keys it uses most.

    A ``kind:`` key means a spec. Ties and files that use no known key are refused with a
    hint to pass ``--kind``.
    """
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a spec, gate, suite or model card is a YAML mapping "
                           f"(key: value), got {type(data).__name__}")
    if "kind" in data:
        return "spec"
    keys = {str(k) for k in data}
    scores = {kind: len(keys & names) for kind, names in _file_kind_keys().items()}
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    if best == 0 or len(winners) > 1:
        raise InvalidInput(
            f"{path}: cannot tell whether this is a job spec, gate, suite or model card from its "
            f"keys ({', '.join(sorted(keys)[:8]) or 'none'}); pass --kind spec|gate|suite|card"
        )
    return winners[0]


def validate_file(path: str, kind: str | None = None) -> str:
    """Check a job spec, gate, suite or model card as ``run`` would read it; return a one-line
    summary. ``kind`` is one of :data:`FILE_KINDS`, or None to detect it from the keys.

    Raises:
        InvalidInput: every problem, then the line ``PATH: invalid KIND``.
    """
    if kind not in (None, *FILE_KINDS):
        raise InvalidInput(f"--kind {kind!r}; expected one of {', '.join(FILE_KINDS)}")
    if kind is None:
        try:
            data = load_yaml(path, what="file")
        except InvalidInput:
            # Unreadable as YAML, so its keys cannot tell: read it as what `validate` took
            # first, a job spec, so the message names it as one (`--kind` says otherwise).
            kind = "spec"
        else:
            kind = detect_file_kind(data, path)
    try:
        return _validate_as(path, kind)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc}\n{path}: invalid {kind}") from None


def _validate_as(path: str, kind: str) -> str:
    if kind == "spec":
        spec = load_spec(path, check_files=True)
        read = [f"{f} {getattr(spec, f)}" for f in ("model_card", "suite", "gate")
                if getattr(spec, f, None)]
        tail = f" ({'; '.join(read)})" if read else ""
        return f"{path}: valid {spec.kind} job {spec.name!r}{tail}"
    if kind == "gate":
        gate = _load_gate(path)
        checks = [k for k, v in gate.model_dump().items() if v is not None]
        return f"{path}: valid gate ({', '.join(checks) or 'no thresholds'})"
    if kind == "suite":
        from ironsight.robustness.suites import load_suite

        suite = load_suite(path)
        return (f"{path}: valid suite {suite.name!r} ({len(suite.conditions)} conditions, "
                f"severities {list(suite.severities)}, {len(suite.attacks)} attacks)")
    card = _load_card(path)
    weights = card.weights_uri()
    if _local(weights) and not os.path.lexists(weights.removeprefix("file://")):
        raise InvalidInput(f"model card {path}: weights: weights file {weights} does not exist "
                           f"(relative to the card's folder){_did_you_mean_file(weights)}")
    return f"{path}: valid model card {card.name!r} ({card.format}, weights {weights})"
