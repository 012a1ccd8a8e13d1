"""Reading a job spec file: the YAML validated into its kind's model, relative paths resolved.

| function                        | does                                                       |
|---------------------------------|------------------------------------------------------------|
| :func:`load_spec`               | a YAML spec (local or ``s3://``) -> ``ClassifyJob`` / ``AuditJob`` / ``CompareJob`` |
| :func:`spec_dir`                | the folder relative paths in a spec start from            |
| :func:`resolve_relative_paths`  | relative local path fields joined to that folder          |
| :func:`relative_paths_as_written` | which fields were relative, as the file wrote them      |
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

from pydantic import BaseModel

from ironsight.cluster.errors import did_you_mean
from ironsight.cluster.yamlfile import (
    ConfigInvalid,
    first_problems,
    load_yaml,
    short_repr,
    validate_config,
)
from ironsight.jobs.spec import SPEC_KINDS, AuditJob, ClassifyJob, CompareJob
from ironsight.jobs.spec_args import is_path_field


def load_spec(path: str, *, check_files: bool = False) -> ClassifyJob | AuditJob:
    """Read and validate a YAML job spec; errors name the file and the field path.

    The file is read by :func:`ironsight.cluster.yamlfile.load_yaml`: a regular file (local or
    ``s3://``) of at most 1 MiB, without duplicate keys, alias bombs or deep nesting.

    Relative paths in the spec (``input``, ``output``, ``weights``, ``model_card``,
    ``baseline``, ``gate``, a suite file, ``allowed_roots``) start at the spec file's folder,
    not at the current directory: :func:`resolve_relative_paths`, the one place this happens
    for ``run``, ``validate``, ``submit``, ``schedule`` and ``deploy render``. What they were
    as written stays available through :func:`relative_paths_as_written`.

    With ``check_files`` the local model card, suite and gate are loaded as ``run`` would load
    them (:func:`~ironsight.jobs.spec_checks.referenced_file_problems`), and every problem is
    reported at once.
    """
    data = load_yaml(path, what="spec file")
    if not isinstance(data, dict):
        raise ConfigInvalid(f"{path}: a job spec is a YAML mapping (key: value), got {type(data).__name__}")
    kind = data.get("kind", "classify")
    model = SPEC_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        close = did_you_mean(kind, SPEC_KINDS) if isinstance(kind, str) else ""
        hint = f"; {close.rstrip()}" if close else ""
        raise ConfigInvalid(
            f"{path}: kind: {short_repr(kind)} is not a job kind; expected one of "
            f"{sorted(SPEC_KINDS)}{hint}"
        )
    data, written = resolve_relative_paths(data, model, spec_dir(path))
    spec = validate_config(data, model, source=path, shape="kind: ..., input: ..., output: ...")
    spec._written_paths = written
    if check_files:
        from ironsight.jobs.spec_checks import referenced_file_problems  # it imports this module

        problems = referenced_file_problems(spec, path)
        if problems:
            raise ConfigInvalid("\n".join(first_problems(problems)))
    return spec


def spec_dir(spec_path: str) -> str:
    """The folder relative paths in the spec at ``spec_path`` start from (absolute).

    >>> spec_dir("s3://bucket/specs/nightly.yaml")
    's3://bucket/specs'
    >>> spec_dir("/etc/ironsight/spec.yaml")
    '/etc/ironsight'
    """
    if "://" in spec_path and not spec_path.startswith("file://"):
        return spec_path.rsplit("/", 1)[0]
    local = spec_path.removeprefix("file://")
    return os.path.dirname(os.path.abspath(os.path.expanduser(local)))


def _is_relative_local(value: Any) -> bool:
    return (isinstance(value, str) and bool(value) and "://" not in value
            and not value.startswith("~") and not os.path.isabs(value))


def _join(base: str, relative: str) -> str:
    if "://" in base:
        return posixpath.join(base, relative)
    return os.path.normpath(os.path.join(base, relative))


def resolve_relative_paths(data: dict[str, Any], model: type[BaseModel], base: str
                           ) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with every relative local path field joined to ``base`` (the spec's folder).

    Returns the new mapping and, per field that was relative, its value as written. A suite
    that names a built-in (``quick``: no ``/``, no YAML suffix, no such file in ``base``) is
    left alone; absolute paths, ``~/...`` and URIs are left as they are.

    >>> resolve_relative_paths({"gate": "g.yaml", "input": "s3://b/in", "suite": "quick"},
    ...                        AuditJob, "/specs")
    ({'gate': '/specs/g.yaml', 'input': 's3://b/in', 'suite': 'quick'}, {'gate': 'g.yaml'})
    """
    out = dict(data)
    written: dict[str, str] = {}
    for name, f in model.model_fields.items():
        value = out.get(name)
        if not is_path_field(f) or not _is_relative_local(value):
            continue
        if name == "suite" and not ("/" in value or value.endswith((".yaml", ".yml"))
                                    or os.path.lexists(_join(base, value))):
            continue  # a built-in suite name
        out[name] = _join(base, value)
        written[name] = value
    _resolve_model_lists(out, model, base, written)
    roots = out.get("allowed_roots")
    if "allowed_roots" in model.model_fields and isinstance(roots, (str, list)):
        items = [r.strip() for r in roots.split(",") if r.strip()] if isinstance(roots, str) else roots
        if any(_is_relative_local(r) for r in items):
            written["allowed_roots"] = roots if isinstance(roots, str) else ",".join(map(str, roots))
            out["allowed_roots"] = [_join(base, r) if _is_relative_local(r) else r for r in items]
    return out, written


def _resolve_model_lists(out: dict[str, Any], model: type[BaseModel], base: str, written: dict[str, str]) -> None:
    """A compare spec's paths in lists: ``model_card: [a.yaml, ...]`` and each ``models:``
    entry's ``weights`` and ``model_card``, joined to ``base`` like the fields above."""
    if model is not CompareJob:
        return
    cards = out.get("model_card")
    if isinstance(cards, list):
        out["model_card"] = [_join(base, c) if _is_relative_local(c) else c for c in cards]
        for i, c in enumerate(cards):
            if _is_relative_local(c):
                written[f"model_card.{i}"] = c
    entries = out.get("models")
    if isinstance(entries, list):
        out["models"] = [dict(e) if isinstance(e, dict) else e for e in entries]
        for i, entry in enumerate(out["models"]):
            for key in ("weights", "model_card"):
                if isinstance(entry, dict) and _is_relative_local(entry.get(key)):
                    written[f"models.{i}.{key}"] = entry[key]
                    entry[key] = _join(base, entry[key])


def relative_paths_as_written(spec: BaseModel) -> dict[str, str]:
    """The fields :func:`load_spec` resolved against the spec's folder, as the file wrote them
    (``submit`` refuses them: the cluster does not have the spec's folder)."""
    return dict(getattr(spec, "_written_paths", None) or {})
