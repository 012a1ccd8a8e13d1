"""Job specs: typed, validated, and the single source of the CLI's flags.

A spec is YAML (``ironsight run SPEC.yaml``) or command-line flags (``ironsight classify ...``);
both are validated into the same pydantic model, so a flag and a spec key are the same thing:
``--top-k 3`` is ``top_k: 3``. Every field's description is its ``--help`` text.

>>> spec = ClassifyJob(input="in/", output="out/", model="resnet18", random_weights=True)
>>> spec.top_k, spec.batch_size
(5, 64)
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ironsight.cluster import paths
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import (
    MAX_MESSAGE_CHARS,
    check_config_file,
    clip,
    first_problems,
    load_yaml,
    short_repr,
)


def _cli(*, positional: bool = False, metavar: str | None = None, short: str | None = None,
         path: bool = False) -> dict:
    """Field metadata: how the field appears on the command line; ``path`` marks a field whose
    value is a file, directory or ``s3://`` URI (checked against the allowed roots)."""
    extra: dict = {"cli": {"positional": positional, "metavar": metavar, "short": short}}
    if path:
        extra["path"] = True
    return extra


def _allowed_roots_field() -> Any:
    return Field(
        None,
        description="confine this job to these roots (comma-separated directories and "
        "s3://bucket/prefix URIs): every path it names (INPUT, OUTPUT, weights, model card, ...) "
        "must lie inside one, symlinks resolved, and a corpus row whose image path lies outside "
        f"becomes an error row. Narrows the operator's {paths.ENV_ALLOWED_ROOTS} (used when this "
        "is not given); cannot widen it",
        json_schema_extra=_cli(metavar="DIR_OR_S3[,...]"),
    )


class _WithinRoots(BaseModel):
    """Every path field of a job lies inside the allowed roots (:mod:`ironsight.cluster.paths`).

    The roots are the spec's ``allowed_roots`` when given, else the operator's
    ``IRONSIGHT_ALLOWED_ROOTS``; the spec's must themselves lie inside the operator's.
    """

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
        if isinstance(data, dict) and data.get("allowed_roots", ...) is None:
            del data["allowed_roots"]
        return data

    def effective_roots(self) -> tuple[str, ...]:
        """The normalised roots this job runs under; empty when none are configured."""
        spec_roots: list[str] | None = getattr(self, "allowed_roots", None)
        if spec_roots:
            return paths.parse_roots(spec_roots, source="allowed_roots")
        return paths.operator_roots()

    @model_validator(mode="after")
    def _paths_within_roots(self) -> _WithinRoots:
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
            _raise(type(self), problems)
        roots = self.effective_roots()
        if not roots:
            return self
        where = "allowed_roots" if spec_roots else paths.ENV_ALLOWED_ROOTS
        for name, f in type(self).model_fields.items():
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            value = getattr(self, name)
            if not extra.get("path") or value is None or _is_builtin_suite(name, value):
                continue
            why = paths.check_within(value, roots)
            if why:
                problems.append(((name,), value, f"{why}, set by {where}"))
        if problems:
            _raise(type(self), problems)
        return self


def _is_builtin_suite(field: str, value: str) -> bool:
    """``suite: quick`` names a built-in suite, not a file: it has no ``/``, no YAML suffix and
    no file of that name exists (decided without importing the suites, which import torch)."""
    if field != "suite":
        return False
    looks_like_a_file = "/" in value or value.endswith((".yaml", ".yml")) or os.path.exists(value)
    return not looks_like_a_file


def _config_file(value: Any, what: str) -> Any:
    """A YAML file field (card, suite, gate) that exists here must be a regular file of at most
    1 MiB (:func:`ironsight.cluster.yamlfile.check_config_file`): a FIFO, ``/dev/zero`` or a 10 MB file
    is refused when the spec is validated, before Ray starts; it is checked again when read."""
    if isinstance(value, str):
        try:
            check_config_file(value, what=what)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None
    return value


def _raise(model: type[BaseModel], problems: list[tuple[tuple[str | int, ...], Any, str]]) -> None:
    """Raise one ValidationError with an error per field path (a plain ValueError raised in a
    model validator has no location; pydantic-core passes a ValidationError through as is,
    pydantic/pydantic-core#510)."""
    raise ValidationError.from_exception_data(
        model.__name__,
        [InitErrorDetails(type=PydanticCustomError("outside_allowed_roots", "{reason}", {"reason": why}),
                          loc=loc, input=value)
         for loc, value, why in problems],
    )


class ModelChoice(BaseModel):
    """Which model, and where its weights come from (shared by every job kind)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="registered model name (see `ironsight models list`); optional with --model-card",
        json_schema_extra=_cli(metavar="NAME"),
    )
    weights: str | None = Field(
        None,
        description="weights file or s3:// URI: .safetensors (preferred), a state dict (.pt/.pth, "
        "loaded with weights_only=True), a torch.export program (.pt2) or TorchScript",
        json_schema_extra=_cli(metavar="PATH_OR_URI", path=True),
    )
    model_card: str | None = Field(
        None,
        description="model card YAML describing your own model (format, arch, weights, input "
        "size, mean/std, class names)",
        json_schema_extra=_cli(metavar="CARD.yaml", path=True),
    )
    random_weights: bool = Field(
        False, description="random weights, for tests and benchmarks only: labels are meaningless"
    )

    @field_validator("model_card")
    @classmethod
    def _card_is_a_file(cls, value: str | None) -> str | None:
        return _config_file(value, "model card")

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModelChoice:
        if self.model is None and self.model_card is None:
            raise ValueError("name a model with --model NAME, or describe one with --model-card CARD.yaml")
        if self.random_weights and (self.weights or self.model_card):
            raise ValueError("--random-weights cannot be combined with --weights or --model-card")
        if not (self.weights or self.model_card or self.random_weights):
            raise ValueError(
                f"model {self.model!r} needs weights: pass --weights PATH_OR_URI or --model-card "
                "CARD.yaml (nothing is downloaded); --random-weights exists only for tests and benchmarks"
            )
        return self

    def source(self):
        from ironsight.cluster.models import ModelSource

        roots = self.effective_roots() if isinstance(self, _WithinRoots) else ()
        return ModelSource(
            name=self.model, weights=self.weights, card=self.model_card, random_weights=self.random_weights,
            allowed_roots=roots,
        )


class RunOptions(BaseModel):
    """Where and how a job runs; none of these change its results."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None,
        description="Ray cluster to join ('auto', HOST:PORT, ray://HOST:10001); default: an "
        "embedded Ray on this machine",
        json_schema_extra=_cli(metavar="RAY_ADDRESS"),
    )
    actors: int | None = Field(
        None, ge=1, description="predictor actors; default one per GPU, or half the cores on CPU"
    )
    batch_size: int = Field(
        64, ge=1, le=65536, description="images per inference batch on each actor"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto uses GPUs when the cluster has them"
    )


class ClassifyJob(ModelChoice, RunOptions, _WithinRoots):
    """Bulk labeling: every row of INPUT gets top-k labels (or an error) in OUTPUT, exactly once."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["classify"] = Field("classify", description="job kind", json_schema_extra={"cli": None})
    name: str = Field("classify", description="job name, used by run history and schedules")
    input: str = Field(
        description="Parquet file, directory, glob, or s3://bucket/prefix of images",
        json_schema_extra=_cli(positional=True, metavar="INPUT", path=True),
    )
    output: str = Field(
        description="output directory or s3:// prefix (one Parquet file per input shard)",
        json_schema_extra=_cli(positional=True, metavar="OUTPUT", path=True),
    )
    image_column: str | None = Field(
        None,
        description="image column; default: detected (binary bytes, Hugging Face Image struct, "
        "Spark binaryFile content)",
        json_schema_extra=_cli(metavar="C"),
    )
    id_column: str | None = Field(
        None,
        description="id column; default: id/key/path if present, else FILE#ROW",
        json_schema_extra=_cli(metavar="C"),
    )
    top_k: int = Field(5, ge=1, le=1000, description="labels kept per image", json_schema_extra=_cli(metavar="K"))
    max_rows_per_shard: int = Field(
        4096, ge=1, description="rows per output file at most (whole row groups are never split)"
    )
    skip_bad_files: bool = Field(
        False, description="skip unreadable or non-Parquet input files (listed) instead of refusing"
    )
    overwrite: bool = Field(
        False, description="replace an OUTPUT written by a different model or spec instead of refusing"
    )
    torch_compile: bool = Field(
        False,
        description="compile the model with torch.compile in each actor: measured 1.10x (resnet18) "
        "to 1.22x (demo_cnn) on CPU after 12-34 s of compiling, so it pays from ~10,000 (resnet18) "
        "to ~160,000 (demo_cnn) images an actor (benchmarks/torch_compile.py)",
    )
    allowed_roots: list[str] | None = _allowed_roots_field()


class AuditJob(ModelChoice, RunOptions, _WithinRoots):
    """Robustness audit: accuracy under conditions x severities and attacks, reports, a gate."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["audit"] = Field("audit", description="job kind", json_schema_extra={"cli": None})
    name: str = Field("audit", description="job name, used by run history and schedules")
    input: str = Field(
        description="labeled Parquet eval set: file, directory, glob or s3:// prefix",
        json_schema_extra=_cli(positional=True, metavar="INPUT", path=True),
    )
    output: str = Field(
        description="directory or s3:// prefix for report.json/.md/.html and predictions.parquet",
        json_schema_extra=_cli(positional=True, metavar="OUTPUT", path=True),
    )
    label_column: str = Field("label", description="integer class-index column of the eval set",
                              json_schema_extra=_cli(metavar="C"))
    image_column: str | None = Field(None, description="image column; default: detected",
                                     json_schema_extra=_cli(metavar="C"))
    id_column: str | None = Field(None, description="id column; default: id/key/path or FILE#ROW",
                                  json_schema_extra=_cli(metavar="C"))
    suite: str = Field(
        "quick",
        description="quick, standard, or a suite YAML (conditions, severities, attacks)",
        json_schema_extra=_cli(metavar="quick|standard|FILE.yaml", path=True),
    )
    severities: list[int] | None = Field(
        None,
        description="severities to run, e.g. 1,3,5 (default: the suite's)",
        json_schema_extra=_cli(metavar="1,3,5"),
    )
    max_images: int | None = Field(None, ge=1, description="audit at most this many images (first N rows)",
                                   json_schema_extra=_cli(metavar="N"))
    seed: int = Field(0, description="seed of every random condition and attack start",
                      json_schema_extra=_cli(metavar="S"))
    baseline: str | None = Field(
        None,
        description="report.json of a previous audit: adds CE/mCE and per-condition changes",
        json_schema_extra=_cli(metavar="PREVIOUS/report.json", path=True),
    )
    gate: str | None = Field(
        None, description="release gate YAML; a failed gate exits 3",
        json_schema_extra=_cli(metavar="GATE.yaml", path=True),
    )
    allowed_roots: list[str] | None = _allowed_roots_field()

    @field_validator("gate")
    @classmethod
    def _gate_is_a_file(cls, value: str | None) -> str | None:
        return _config_file(value, "gate file")

    @field_validator("suite")
    @classmethod
    def _suite_is_a_file(cls, value: str) -> str:
        return value if _is_builtin_suite("suite", value) else _config_file(value, "suite file")

    @field_validator("severities", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"expected comma-separated integers like 1,3,5, got {value!r}") from None
        return value

    @field_validator("severities")
    @classmethod
    def _in_range(cls, value: list[int] | None) -> list[int] | None:
        from ironsight.robustness.conditions import SEVERITIES

        if value is not None:
            bad = [v for v in value if v not in SEVERITIES]
            if bad or not value:
                raise ValueError(f"severities must be among {list(SEVERITIES)}, got {value}")
        return value


JobSpec = Annotated[Union[ClassifyJob, AuditJob], Field(discriminator="kind")]  # noqa: UP007


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem, each naming the field path: ``spec.yaml: top_k: must be >= 1``.

    Values are never echoed (``include_input=False``); a message a validator built from a
    value is clipped, and past :data:`ironsight.cluster.yamlfile.MAX_PROBLEMS` the rest are counted.
    """
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = clip(".".join(str(p) for p in err["loc"]) or "(spec)")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `ironsight validate --help` lists the keys)"
        lines.append(f"{source}: {loc}: {clip(msg, MAX_MESSAGE_CHARS)}")
    return "\n".join(first_problems(lines))


def load_spec(path: str) -> ClassifyJob | AuditJob:
    """Read and validate a YAML job spec; errors name the file and the field path.

    The file is read by :func:`ironsight.cluster.yamlfile.load_yaml`: a regular file (local or
    ``s3://``) of at most 1 MiB, without duplicate keys, alias bombs or deep nesting.
    """
    data = load_yaml(path, what="spec file")
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a job spec is a YAML mapping (key: value), got {type(data).__name__}")
    kind = data.get("kind", "classify")
    model = SPEC_KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidInput(
            f"{path}: kind: {short_repr(kind)} is not a job kind; expected one of {sorted(SPEC_KINDS)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(format_validation_error(exc, path)) from None


SPEC_KINDS: dict[str, type[BaseModel]] = {"classify": ClassifyJob, "audit": AuditJob}


# --- the CLI, generated from the spec models ------------------------------------------------


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of ``X | None``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def add_spec_arguments(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """Add one option per spec field (positional where the field says so).

    Defaults are left to the model (argparse.SUPPRESS), so the spec is the only place a
    default lives; the help text shows it.
    """
    for name, f in model.model_fields.items():
        extra = (f.json_schema_extra or {}) if isinstance(f.json_schema_extra, dict) else {}
        if "cli" in extra and extra["cli"] is None:
            continue
        cli = extra.get("cli") or {}
        tp, _ = _unwrap(f.annotation)
        flag = "--" + name.replace("_", "-")
        default_txt = "" if f.is_required() or f.default in (None, False) else f" (default: {f.default})"
        help_txt = (f.description or "") + default_txt
        kwargs: dict[str, Any] = {"help": help_txt, "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs["action"] = "store_true"
        else:
            if typing.get_origin(tp) is Literal:
                kwargs["choices"] = list(typing.get_args(tp))
            elif tp in (int, float):
                kwargs["type"] = tp
            kwargs["metavar"] = cli.get("metavar") or name.upper()
        if cli.get("positional"):
            kwargs.pop("default")
            parser.add_argument(name, **kwargs)
        else:
            parser.add_argument(flag, dest=name, **kwargs)


def spec_from_args(model: type[BaseModel], args: argparse.Namespace) -> Any:
    """Validate parsed flags into the spec model; errors name the flag."""
    values = {k: v for k, v in vars(args).items() if k in model.model_fields}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            where = _flag(model, loc[0]) if loc else "arguments"
            lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise InvalidInput("\n".join(lines)) from exc


def _flag(model: type[BaseModel], name: str) -> str:
    """How a field is written on the command line: ``--top-k``, or ``INPUT`` for a positional."""
    f = model.model_fields.get(name)
    extra = (f.json_schema_extra if f is not None and isinstance(f.json_schema_extra, dict) else None) or {}
    cli = extra.get("cli") or {}
    if cli.get("positional"):
        return cli.get("metavar") or name.upper()
    return "--" + name.replace("_", "-")
