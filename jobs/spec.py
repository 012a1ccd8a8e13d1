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
import posixpath
import types
import typing
from typing import Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ironsight.cluster import paths
from ironsight.cluster.errors import InvalidInput, close_matches, did_you_mean
from ironsight.cluster.yamlfile import (
    MAX_MESSAGE_CHARS,
    ConfigInvalid,
    check_config_file,
    clip,
    first_problems,
    load_yaml,
    short_repr,
    validate_config,
)


def _cli(*, positional: bool = False, metavar: str | None = None, short: str | None = None,
         path: bool = False, repeat: bool = False) -> dict:
    """Field metadata: how the field appears on the command line; ``path`` marks a field whose
    value is a file, directory or ``s3://`` URI (checked against the allowed roots); ``repeat``
    a list field whose option is given once per item (``--model-card A.yaml --model-card B.yaml``)."""
    extra: dict = {"cli": {"positional": positional, "metavar": metavar, "short": short, "repeat": repeat}}
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
            if not extra.get("path") or not isinstance(value, str) or _is_builtin_suite(name, value):
                continue  # a list of paths (CompareJob's) is checked by its model
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
    weights_version: str | None = Field(
        None,
        description="torchvision weight version whose preprocessing --model uses (default: "
        "torchvision's DEFAULT, e.g. IMAGENET1K_V2 for resnet50; `ironsight models show NAME` "
        "lists them); a model card sets `weights_version` itself",
        json_schema_extra=_cli(metavar="IMAGENET1K_V1"),
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
        if self.weights_version and self.model_card:
            raise ValueError("--weights-version goes with --model; a model card sets `weights_version` itself")
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
            allowed_roots=roots, weights_version=self.weights_version,
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


# An audit shards its eval set finer than bulk labeling: an eval set is small, and more shards
# means more CPU tasks corrupting images in parallel (ironsight.jobs.audit plans with it).
AUDIT_ROWS_PER_SHARD = 256


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
    keep_columns: list[str] | None = Field(
        None,
        description="input columns to copy next to the predictions, typed as in the input "
        "(comma-separated names, or '*' for every column but the image bytes); the image "
        "column is copied only when named",
        json_schema_extra=_cli(metavar="A,B|*"),
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
        description="compile the model with torch.compile in each actor: faster per batch, after "
        "seconds to a minute of compiling in every actor, so it pays only on long runs "
        "(docs/performance.md; benchmarks/torch_compile.py)",
    )
    allowed_roots: list[str] | None = _allowed_roots_field()

    @field_validator("keep_columns", mode="before")
    @classmethod
    def _split_keep(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and not value:
            raise ValueError("names no column; give comma-separated column names or '*'")
        return value

    def plan_input(self) -> Any:
        """INPUT planned from its footers as the job will run it (pyarrow only: no torch, no
        Ray), so that a wrong column or a bad file is refused in a second; the CLI passes the
        plan on to ``ironsight.cluster.pipeline.plan_classify``."""
        from ironsight.cluster import corpus

        return corpus.plan_corpus(
            self.input, image_column=self.image_column, id_column=self.id_column,
            max_rows_per_shard=self.max_rows_per_shard, skip_bad_files=self.skip_bad_files,
            allowed_roots=self.effective_roots(), keep_columns=self.keep_columns,
        )


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
    overwrite: bool = Field(
        False, description="replace the reports of another model, eval set or suite in OUTPUT "
        "instead of refusing (only report.json/.md/.html and predictions.parquet are replaced)"
    )
    activation_maps: bool = Field(
        True, description="activation maps (Grad-CAM, or gradient saliency as a fallback) over the "
        "misclassified examples in report.html; --no-activation-maps (activation_maps: false) "
        "leaves them out, the images stay"
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

    def plan_input(self) -> Any:
        """The eval set planned from its footers as the audit will run it (pyarrow only), so
        that a wrong column is refused before torch is imported; passed on to
        ``ironsight.jobs.audit.plan_audit``."""
        from ironsight.cluster import corpus

        return corpus.plan_corpus(
            self.input, image_column=self.image_column, id_column=self.id_column,
            label_column=self.label_column, max_rows_per_shard=AUDIT_ROWS_PER_SHARD,
            allowed_roots=self.effective_roots(),
            can_skip=False,  # an audit has no skip_bad_files: the refusal must not suggest it
        )


class CompareModel(ModelChoice):
    """One model of a comparison: a ``models:`` entry of a ``kind: compare`` spec."""

    name: str | None = Field(
        None, description="label in the reports and folder OUTPUT/models/NAME (default: the "
        "card's or model's name; a clash gets -2, -3, ...)",
    )


def _audit_field(name: str) -> Any:
    """An :class:`AuditJob` field as a compare job has it: same default, help and checks."""
    return AuditJob.model_fields[name]


class CompareJob(RunOptions, _WithinRoots):
    """Model comparison: several models audited on one eval set and suite, profiled for speed
    and memory, ranked, and one recommended under an objective (``ironsight.jobs.compare``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compare"] = Field("compare", description="job kind", json_schema_extra={"cli": None})
    name: str = Field("compare", description="job name, used by run history and schedules")
    input: str = _audit_field("input")
    output: str = Field(
        description="directory or s3:// prefix: compare.json/.md/.html, and models/NAME/ with "
        "each model's audit reports and predictions.parquet",
        json_schema_extra=_cli(positional=True, metavar="OUTPUT", path=True),
    )
    model: list[str] | None = Field(
        None,
        description="a registered model, once per model: NAME=WEIGHTS (a weights file or s3:// "
        "URI), or NAME with --random-weights; `ironsight models list` names them",
        json_schema_extra=_cli(metavar="NAME[=WEIGHTS]", repeat=True),
    )
    model_card: list[str] | None = Field(
        None, description="a model card YAML, once per model",
        json_schema_extra=_cli(metavar="CARD.yaml", path=True, repeat=True),
    )
    models: list[CompareModel] | None = Field(
        None, description="the models, in a spec: a list of {model | model_card, weights, "
        "weights_version, random_weights, name}", json_schema_extra={"cli": None},
    )
    random_weights: bool = Field(
        False, description="random weights for every --model NAME: only the speed, memory, "
        "parameter and FLOP columns mean anything, and every report says so",
    )
    label_column: str = _audit_field("label_column")
    image_column: str | None = _audit_field("image_column")
    id_column: str | None = _audit_field("id_column")
    suite: str = _audit_field("suite")
    severities: list[int] | None = _audit_field("severities")
    max_images: int | None = _audit_field("max_images")
    seed: int = _audit_field("seed")
    objective: str | None = Field(
        None, description="what to recommend, e.g. 'max accuracy s.t. p95_ms <= 20' (grammar: "
        "docs/cli.md); checked before anything runs", json_schema_extra=_cli(metavar="TEXT"),
    )
    profile: bool = Field(
        True, description="latency, throughput, memory, parameters and FLOPs of each model, one "
        "model at a time on the device it ran on; --no-profile skips them",
    )
    activation_maps: bool = Field(
        True, description="activation maps of the misclassified examples; --no-activation-maps "
        "skips them (images still shown)",
    )
    overwrite: bool = Field(
        False, description="replace the comparison of another eval set or suite in OUTPUT instead "
        "of refusing (only the comparison's files and its models' folders are written)",
    )
    allowed_roots: list[str] | None = _allowed_roots_field()

    _suite_is_a_file = field_validator("suite")(AuditJob.__dict__["_suite_is_a_file"].__func__)
    _split_commas = field_validator("severities", mode="before")(AuditJob.__dict__["_split_commas"].__func__)
    _in_range = field_validator("severities")(AuditJob.__dict__["_in_range"].__func__)
    plan_input = AuditJob.plan_input

    @field_validator("model_card")
    @classmethod
    def _cards_are_files(cls, value: list[str] | None) -> list[str] | None:
        for card in value or ():
            _config_file(card, "model card")
        return value

    @model_validator(mode="after")
    def _models_given(self) -> CompareJob:
        choices = self.model_choices()
        if not choices:
            raise ValueError("name the models to compare: --model-card CARD.yaml or --model "
                             "NAME=WEIGHTS, once per model (or a spec's `models:` list)")
        roots = self.effective_roots()
        problems = []
        for i, c in enumerate(choices):
            for key in ("weights", "model_card"):
                value = getattr(c, key)
                why = paths.check_within(value, roots) if value and roots else None
                if why:
                    problems.append((("models", i, key), value, f"{why}, set by allowed_roots"))
        if problems:
            _raise(type(self), problems)
        return self

    def model_label(self) -> str:
        """The models in one line, for run history and log records: ``resnet18,my-card``."""
        return ",".join(c.name or c.model or posixpath.splitext(posixpath.basename(str(c.model_card)))[0]
                        for c in self.model_choices())

    def model_choices(self) -> list[CompareModel]:
        """Every model, in order: ``--model`` items, ``--model-card`` items, then ``models:``.

        >>> job = CompareJob(input="e/", output="o/", model=["resnet18=r.safetensors"],
        ...                  model_card=["a.yaml"])
        >>> [(c.model, c.weights, c.model_card) for c in job.model_choices()]
        [('resnet18', 'r.safetensors', None), (None, None, 'a.yaml')]
        """
        out: list[CompareModel] = []
        for item in self.model or ():
            name, _, weights = item.partition("=")
            if not name.strip():
                raise ValueError(f"--model {item!r}: expected NAME=WEIGHTS or NAME")
            if not weights and not self.random_weights:
                raise ValueError(f"--model {name}: give its weights as --model {name}=PATH_OR_URI "
                                 "(nothing is downloaded), or pass --random-weights to compare "
                                 "speed and memory only")
            if weights and self.random_weights:
                raise ValueError(f"--model {item}: --random-weights cannot be combined with weights")
            out.append(CompareModel(model=name.strip(), weights=weights or None,
                                    random_weights=self.random_weights))
        out += [CompareModel(model_card=card) for card in self.model_card or ()]
        out += list(self.models or ())
        return out


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
    them (:func:`referenced_file_problems`), and every problem is reported at once.
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
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        value = out.get(name)
        if not extra.get("path") or not _is_relative_local(value):
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


SPEC_KINDS: dict[str, type[BaseModel]] = {"classify": ClassifyJob, "audit": AuditJob, "compare": CompareJob}


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
        if cli.get("repeat"):
            kwargs["action"] = "append"
        if tp is bool and f.default is True:  # on by default: the flag turns it off
            flag, help_txt = "--no-" + name.replace("_", "-"), f.description or ""
            kwargs.update(action="store_false", help=help_txt)
        elif tp is bool:
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
