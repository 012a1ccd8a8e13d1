"""Job specs: typed, validated, and the single source of the CLI's flags.

A spec is YAML (``ironsight run SPEC.yaml``) or command-line flags (``ironsight classify ...``);
both are validated into the same pydantic model, so a flag and a spec key are the same thing:
``--top-k 3`` is ``top_k: 3``. Every field's description is its ``--help`` text.

| module                         | holds                                                       |
|--------------------------------|-------------------------------------------------------------|
| ``ironsight.jobs.spec``        | this file: the models, one per kind (:data:`SPEC_KINDS`)    |
| ``ironsight.jobs.spec_roots``  | ``WithinRoots``, the base that confines a job's paths to the allowed roots |
| ``ironsight.jobs.spec_args``   | the command line from the models (``add_spec_arguments``, ``spec_from_args``) |
| ``ironsight.jobs.spec_file``   | ``load_spec``: a YAML spec, relative paths resolved          |
| ``ironsight.jobs.spec_checks`` | the files a spec names, and ``ironsight validate``          |
| ``ironsight.jobs.run_spec``    | a spec run as the CLI runs it (``config_from_spec``, ``classify_spec``, ``audit_spec``) |

>>> spec = ClassifyJob(input="in/", output="out/", model="resnet18", random_weights=True)
>>> spec.top_k, spec.batch_size
(5, 64)
"""

from __future__ import annotations

import posixpath
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ironsight.cluster import paths
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import check_config_file
from ironsight.jobs.spec_args import cli_option
from ironsight.jobs.spec_roots import (
    WithinRoots,
    allowed_roots_field,
    is_builtin_suite,
    raise_problems,
)


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


class ModelChoice(BaseModel):
    """Which model, and where its weights come from (shared by every job kind)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description="registered model name (see `ironsight models list`); optional with --model-card",
        json_schema_extra=cli_option(metavar="NAME"),
    )
    weights: str | None = Field(
        None,
        description="weights file or s3:// URI: .safetensors (preferred), a state dict (.pt/.pth, "
        "loaded with weights_only=True), a torch.export program (.pt2) or TorchScript",
        json_schema_extra=cli_option(metavar="PATH_OR_URI", path=True),
    )
    model_card: str | None = Field(
        None,
        description="model card YAML describing your own model (format, arch, weights, input "
        "size, mean/std, class names)",
        json_schema_extra=cli_option(metavar="CARD.yaml", path=True),
    )
    random_weights: bool = Field(
        False, description="random weights, for tests and benchmarks only: labels are meaningless"
    )
    weights_version: str | None = Field(
        None,
        description="torchvision weight version whose preprocessing --model uses (default: "
        "torchvision's DEFAULT, e.g. IMAGENET1K_V2 for resnet50; `ironsight models show NAME` "
        "lists them); a model card sets `weights_version` itself",
        json_schema_extra=cli_option(metavar="IMAGENET1K_V1"),
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

        roots = self.effective_roots() if isinstance(self, WithinRoots) else ()
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
        json_schema_extra=cli_option(metavar="RAY_ADDRESS"),
    )
    actors: int | None = Field(
        None, ge=1, description="predictor actors; default one per GPU, or on CPU sized from the costs the job measures when it starts (an audit: one per core)"
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


class ClassifyJob(ModelChoice, RunOptions, WithinRoots):
    """Bulk labeling: every row of INPUT gets top-k labels (or an error) in OUTPUT, exactly once."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["classify"] = Field("classify", description="job kind", json_schema_extra={"cli": None})
    name: str = Field("classify", description="job name, used by run history and schedules")
    input: str = Field(
        description="Parquet file, directory, glob, or s3://bucket/prefix of images",
        json_schema_extra=cli_option(positional=True, metavar="INPUT", path=True),
    )
    output: str = Field(
        description="output directory or s3:// prefix (one Parquet file per input shard)",
        json_schema_extra=cli_option(positional=True, metavar="OUTPUT", path=True),
    )
    image_column: str | None = Field(
        None,
        description="image column; default: detected (binary bytes, Hugging Face Image struct, "
        "Spark binaryFile content)",
        json_schema_extra=cli_option(metavar="C"),
    )
    id_column: str | None = Field(
        None,
        description="id column; default: id/key/path if present, else FILE#ROW",
        json_schema_extra=cli_option(metavar="C"),
    )
    keep_columns: list[str] | None = Field(
        None,
        description="input columns to copy next to the predictions, typed as in the input "
        "(comma-separated names, or '*' for every column but the image bytes); the image "
        "column is copied only when named",
        json_schema_extra=cli_option(metavar="A,B|*"),
    )
    top_k: int = Field(5, ge=1, le=1000, description="labels kept per image", json_schema_extra=cli_option(metavar="K"))
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
    allowed_roots: list[str] | None = allowed_roots_field()

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


class EvalSetJob(BaseModel):
    """What an audit and a comparison check alike: their ``suite`` and ``severities`` fields,
    and the eval set planned as the audit runs it. Declares no field (the kinds declare them, in
    their ``--help`` order); its validators apply to its subclasses' fields."""

    @field_validator("suite", check_fields=False)
    @classmethod
    def _suite_is_a_file(cls, value: str) -> str:
        return value if is_builtin_suite("suite", value) else _config_file(value, "suite file")

    @field_validator("severities", mode="before", check_fields=False)
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"expected comma-separated integers like 1,3,5, got {value!r}") from None
        return value

    @field_validator("severities", check_fields=False)
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


class AuditJob(ModelChoice, RunOptions, WithinRoots, EvalSetJob):
    """Robustness audit: accuracy under conditions x severities and attacks, reports, a gate."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["audit"] = Field("audit", description="job kind", json_schema_extra={"cli": None})
    name: str = Field("audit", description="job name, used by run history and schedules")
    input: str = Field(
        description="labeled Parquet eval set: file, directory, glob or s3:// prefix",
        json_schema_extra=cli_option(positional=True, metavar="INPUT", path=True),
    )
    output: str = Field(
        description="directory or s3:// prefix for report.json/.md/.html and predictions.parquet",
        json_schema_extra=cli_option(positional=True, metavar="OUTPUT", path=True),
    )
    label_column: str = Field("label", description="integer class-index column of the eval set",
                              json_schema_extra=cli_option(metavar="C"))
    image_column: str | None = Field(None, description="image column; default: detected",
                                     json_schema_extra=cli_option(metavar="C"))
    id_column: str | None = Field(None, description="id column; default: id/key/path or FILE#ROW",
                                  json_schema_extra=cli_option(metavar="C"))
    suite: str = Field(
        "quick",
        description="quick, standard, or a suite YAML (conditions, severities, attacks)",
        json_schema_extra=cli_option(metavar="quick|standard|FILE.yaml", path=True),
    )
    severities: list[int] | None = Field(
        None,
        description="severities to run, e.g. 1,3,5 (default: the suite's)",
        json_schema_extra=cli_option(metavar="1,3,5"),
    )
    max_images: int | None = Field(None, ge=1, description="audit at most this many images (first N rows)",
                                   json_schema_extra=cli_option(metavar="N"))
    seed: int = Field(0, description="seed of every random condition and attack start",
                      json_schema_extra=cli_option(metavar="S"))
    baseline: str | None = Field(
        None,
        description="report.json of a previous audit: adds CE/mCE and per-condition changes",
        json_schema_extra=cli_option(metavar="PREVIOUS/report.json", path=True),
    )
    gate: str | None = Field(
        None, description="release gate YAML; a failed gate exits 3",
        json_schema_extra=cli_option(metavar="GATE.yaml", path=True),
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
    allowed_roots: list[str] | None = allowed_roots_field()

    @field_validator("gate")
    @classmethod
    def _gate_is_a_file(cls, value: str | None) -> str | None:
        return _config_file(value, "gate file")


class CompareModel(ModelChoice):
    """One model of a comparison: a ``models:`` entry of a ``kind: compare`` spec."""

    name: str | None = Field(
        None, description="label in the reports and folder OUTPUT/models/NAME (default: the "
        "card's or model's name; a clash gets -2, -3, ...)",
    )


def _audit_field(name: str) -> Any:
    """An :class:`AuditJob` field as a compare job has it: same default, help and checks."""
    return AuditJob.model_fields[name]


class CompareJob(RunOptions, WithinRoots, EvalSetJob):
    """Model comparison: several models audited on one eval set and suite, profiled for speed
    and memory, ranked, and one recommended under an objective (``ironsight.jobs.compare``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["compare"] = Field("compare", description="job kind", json_schema_extra={"cli": None})
    name: str = Field("compare", description="job name, used by run history and schedules")
    input: str = _audit_field("input")
    output: str = Field(
        description="directory or s3:// prefix: compare.json/.md/.html, and models/NAME/ with "
        "each model's audit reports and predictions.parquet",
        json_schema_extra=cli_option(positional=True, metavar="OUTPUT", path=True),
    )
    model: list[str] | None = Field(
        None,
        description="a registered model, once per model: NAME=WEIGHTS (a weights file or s3:// "
        "URI), or NAME with --random-weights; `ironsight models list` names them",
        json_schema_extra=cli_option(metavar="NAME[=WEIGHTS]", repeat=True),
    )
    model_card: list[str] | None = Field(
        None, description="a model card YAML, once per model",
        json_schema_extra=cli_option(metavar="CARD.yaml", path=True, repeat=True),
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
        "docs/cli.md); checked before anything runs", json_schema_extra=cli_option(metavar="TEXT"),
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
    allowed_roots: list[str] | None = allowed_roots_field()

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
            raise_problems(type(self), problems)
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


SPEC_KINDS: dict[str, type[BaseModel]] = {"classify": ClassifyJob, "audit": AuditJob, "compare": CompareJob}
