"""Confining a job spec to allowed roots: the base every job spec model shares.

| name                         | what                                                        |
|------------------------------|-------------------------------------------------------------|
| :class:`WithinRoots`         | every path field of a job lies inside the allowed roots     |
| :func:`allowed_roots_field`  | the ``allowed_roots`` field, as every job kind declares it  |
| :func:`is_builtin_suite`     | ``suite: quick`` names a built-in suite, not a file         |
| :func:`raise_problems`       | one ValidationError with an error per field path            |
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ironsight.cluster import paths
from ironsight.jobs.spec_args import cli_option, is_path_field


def allowed_roots_field() -> Any:
    return Field(
        None,
        description="confine this job to these roots (comma-separated directories and "
        "s3://bucket/prefix URIs): every path it names (INPUT, OUTPUT, weights, model card, ...) "
        "must lie inside one, symlinks resolved, and a corpus row whose image path lies outside "
        f"becomes an error row. Narrows the operator's {paths.ENV_ALLOWED_ROOTS} (used when this "
        "is not given); cannot widen it",
        json_schema_extra=cli_option(metavar="DIR_OR_S3[,...]"),
    )


class WithinRoots(BaseModel):
    """Every path field of a job lies inside the allowed roots (:mod:`ironsight.cluster.paths`).

    The roots are the spec's ``allowed_roots`` when given, else the operator's
    ``IRONSIGHT_ALLOWED_ROOTS``; the spec's must themselves lie inside the operator's.
    """

    # Set by load_spec: the path fields it resolved against the spec's folder, as written.
    _written_paths: dict[str, str] = PrivateAttr(default_factory=dict)

    @field_validator("allowed_roots", mode="before", check_fields=False)
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_serializer(mode="wrap")
    def _omit_absent_roots(self, handler: Any) -> Any:
        # A spec without allowed_roots dumps (and so hashes: history, scheduled submission
        # ids) exactly as before the field existed.
        data = handler(self)
        # keep_columns likewise: a classify spec without it hashes as before it existed.
        for key in ("allowed_roots", "keep_columns"):
            if isinstance(data, dict) and key in data and data[key] is None:
                del data[key]
        return data

    def effective_roots(self) -> tuple[str, ...]:
        """The normalised roots this job runs under; empty when none are configured."""
        spec_roots: list[str] | None = getattr(self, "allowed_roots", None)
        if spec_roots:
            return paths.parse_roots(spec_roots, source="allowed_roots")
        return paths.operator_roots()

    @model_validator(mode="after")
    def _paths_within_roots(self) -> WithinRoots:
        operator = paths.operator_roots()
        problems: list[tuple[tuple[str | int, ...], Any, str]] = []
        spec_roots: list[str] | None = getattr(self, "allowed_roots", None)
        if spec_roots is not None and not spec_roots:
            problems.append((("allowed_roots",), spec_roots,
                             "an empty list allows nothing; leave allowed_roots out to use the "
                             f"operator's {paths.ENV_ALLOWED_ROOTS}"))
        for i, root in enumerate(spec_roots or ()):
            try:
                normal = paths.normalize(root)
            except ValueError as exc:
                problems.append((("allowed_roots", i), root, f"{root} {exc}"))
                continue
            if operator and paths.check_within(normal, operator):
                problems.append((("allowed_roots", i), root,
                                 f"{root} is wider than the operator allows: outside "
                                 f"{paths.ENV_ALLOWED_ROOTS} ({', '.join(operator)})"))
        if problems:
            raise_problems(type(self), problems)
        roots = self.effective_roots()
        if not roots:
            return self
        where = "allowed_roots" if spec_roots else paths.ENV_ALLOWED_ROOTS
        for name, f in type(self).model_fields.items():
            value = getattr(self, name)
            if not is_path_field(f) or not isinstance(value, str) or is_builtin_suite(name, value):
                continue  # a list of paths (CompareJob's) is checked by its model
            why = paths.check_within(value, roots)
            if why:
                problems.append(((name,), value, f"{why}, set by {where}"))
        if problems:
            raise_problems(type(self), problems)
        return self


def is_builtin_suite(field: str, value: str) -> bool:
    """``suite: quick`` names a built-in suite, not a file: it has no ``/``, no YAML suffix and
    no file of that name exists (decided without importing the suites, which import torch)."""
    if field != "suite":
        return False
    looks_like_a_file = "/" in value or value.endswith((".yaml", ".yml")) or os.path.exists(value)
    return not looks_like_a_file


def raise_problems(model: type[BaseModel], problems: list[tuple[tuple[str | int, ...], Any, str]]) -> None:
    """Raise one ValidationError with an error per field path (a plain ValueError raised in a
    model validator has no location; pydantic-core passes a ValidationError through as is,
    pydantic/pydantic-core#510)."""
    raise ValidationError.from_exception_data(
        model.__name__,
        [InitErrorDetails(type=PydanticCustomError("outside_allowed_roots", "{reason}", {"reason": why}),
                          loc=loc, input=value)
         for loc, value, why in problems],
    )
