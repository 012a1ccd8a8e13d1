"""The Python API: ``ironsight.classify(...)`` and ``ironsight.audit(...)``.

The same jobs as ``ironsight classify`` / ``ironsight audit``, from Python, through the same
code (:func:`ironsight.jobs.run_spec.classify_spec`, :func:`ironsight.jobs.run_spec.audit_spec`): the
spec is validated by the same models (:class:`~ironsight.jobs.spec.ClassifyJob`,
:class:`~ironsight.jobs.spec.AuditJob`), the run is recorded in the run history
(``ironsight history`` lists it), and the outputs are the CLI's.

| call                                            | what it runs                                 |
|-------------------------------------------------|----------------------------------------------|
| ``classify(ClassifyJob(...))``                  | a spec object, as ``ironsight run`` would    |
| ``classify(input=..., output=..., model=..., weights=...)`` | the spec's keys as keywords (``top_k=3``) |
| ``classify(spec, output=...)``                  | the spec with those keys replaced            |
| ``audit(..., module=net, preprocess=Preprocess(...), class_names=[...])`` | an in-memory ``torch.nn.Module`` |

Ray: a Ray already initialised in this process is used as it is (and left running);
otherwise the spec's ``address`` is joined, or an embedded Ray is started for the call and
shut down after it, as the CLI does.

Errors are the CLI's exceptions (:mod:`ironsight.cluster.errors`), with the same messages:
:class:`~ironsight.cluster.errors.InvalidInput` (the CLI's exit 2: a keyword, file or model
is wrong; nothing ran), :class:`~ironsight.cluster.errors.JobFailed` (exit 1),
:class:`~ironsight.cluster.errors.GateFailed` (exit 3: the audit ran, its reports are written,
the release gate failed). A regression against the previous run of a named audit (the CLI's
exit 4) is not an exception: :attr:`AuditOutcome.regressions` lists it.

In-memory models (:class:`ModuleSource`). The module is the network *after* normalization,
like a registered architecture: Ironsight feeds it ``Normalize(preprocess.mean,
preprocess.std)`` of float pixels in [0, 1], shape ``(N, 3, crop, crop)``, and reads
``(N, len(class_names))`` logits. Pass ``mean=(0, 0, 0), std=(1, 1, 1)`` for a module that
normalizes itself. Ray sends the module to every predictor actor by pickling it
(cloudpickle: a class defined in your script or notebook travels by value, one in an
importable module by reference, so that module must be importable on the workers); a module
that cannot be pickled is refused before any work, with the reason. Its weights' identity
(``weights_sha256`` in the outputs and the history) is a sha256 over its ``state_dict``.
The caller's module is never changed: each process works on a copy (``eval()``, float32).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import ValidationError, model_validator

from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models import LoadedModel, ModelInfo, ModelSource, Normalize
from ironsight.cluster.preprocess import Preprocess
from ironsight.cluster.yamlfile import problem_lines
from ironsight.jobs.spec import AuditJob, ClassifyJob

__all__ = ["AuditOutcome", "ClassifyResult", "ModuleSource", "audit", "classify", "module_sha256"]


# --------------------------------------------------------------------------- in-memory models


def module_sha256(module: Any) -> str:
    """sha256 over a module's ``state_dict``: names, dtypes, shapes and bytes, in key order.

    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> module_sha256(a) == module_sha256(copy.deepcopy(a)), module_sha256(a) == module_sha256(b)
    (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModuleSource(ModelSource):
    """A model source that carries an in-memory ``torch.nn.Module`` to the Ray actors.

    Attributes (besides :class:`~ironsight.cluster.models.ModelSource`'s ``name``):
        module: the network after normalization (see the module docstring); picklable.
        preprocess: its :class:`~ironsight.cluster.preprocess.Preprocess` (crop, resize, and
            the mean/std of the normalization layer Ironsight puts in front of it).
        class_names: one name per output logit.
        weights_sha256: set from the module's ``state_dict`` (:func:`module_sha256`).
        weights: a label for messages (``in-memory module TinyNet``); nothing is read.

    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    >>> src = ModuleSource(name="tiny", module=net, class_names=("a", "b"),
    ...                    preprocess=Preprocess(resize=None, crop=8))
    >>> src.validate().module(torch.rand(4, 3, 8, 8)).shape
    torch.Size([4, 2])
    """

    module: Any = None
    preprocess: Preprocess | None = None
    class_names: tuple[str, ...] = ()
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.module, torch.nn.Module):
            raise InvalidInput(f"module: expected a torch.nn.Module, got {type(self.module).__name__}")
        if not isinstance(self.preprocess, Preprocess):
            raise InvalidInput(
                "preprocess: an in-memory module needs its preprocessing, e.g. "
                "ironsight.Preprocess(resize=None, crop=224, mean=..., std=...)"
            )
        if isinstance(self.class_names, str) or not self.class_names:
            raise InvalidInput("class_names: an in-memory module needs one class name per output logit")
        names = tuple(str(n) for n in self.class_names)
        if len(set(names)) != len(names):
            raise InvalidInput("class_names: the names repeat; give one distinct name per logit")
        object.__setattr__(self, "class_names", names)
        if self.name is None:
            object.__setattr__(self, "name", type(self.module).__name__)
        if self.weights is None:
            object.__setattr__(self, "weights", f"in-memory module {type(self.module).__name__}")
        if not self.weights_sha256:
            object.__setattr__(self, "weights_sha256", module_sha256(self.module))

    def info(self) -> ModelInfo:
        """The module's name, preprocessing and class names (it has no builder)."""

        def builder(num_classes: int) -> torch.nn.Module:
            raise InvalidInput(f"model {self.name!r} is an in-memory module: there is no architecture to rebuild")

        return ModelInfo(name=self.name, preprocess=self.preprocess, class_names=self.class_names,
                         description=f"in-memory {type(self.module).__name__}", builder=builder)

    def _resolve(self) -> tuple[ModelInfo, None, None]:
        return self.info(), None, None

    def load(self, device: str | torch.device = "cpu") -> LoadedModel:
        """``Normalize`` then a copy of the module: eval mode, float32, on ``device``."""
        info = self.info()
        p = info.preprocess
        network = torch.nn.Sequential(Normalize(p.mean, p.std), copy.deepcopy(self.module))
        network = network.float().eval().requires_grad_(False).to(device)
        return LoadedModel(module=network, info=info, weights_sha256=self.weights_sha256, source=self)

    def validate(self) -> LoadedModel:
        """``ModelSource.validate`` (a batch of 1 and of 2 through the model), after checking
        that the module pickles as Ray will pickle it for the actors."""
        from ray import cloudpickle

        try:
            cloudpickle.dumps(self.module)
        except Exception as exc:
            raise InvalidInput(
                f"module {type(self.module).__name__} cannot be pickled for the Ray actors "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); keep "
                "in it only tensors, submodules and plain attributes (no open files, locks or "
                "generators)"
            ) from None
        return super().validate()


# --------------------------------------------------------------------------- specs


def _module_choice(spec: Any) -> Any:
    """A spec whose model is an in-memory module: ``model`` is only its name, and nothing else
    may say where weights come from."""
    given = [f for f in ("weights", "model_card", "weights_version", "random_weights") if getattr(spec, f)]
    if given:
        raise ValueError(f"module= is the model: leave out {', '.join(given)}")
    if not spec.model:
        raise ValueError("name the in-memory model with model=NAME (outputs and the history show it)")
    return spec


class ModuleClassifyJob(ClassifyJob):
    """A :class:`ClassifyJob` whose model is an in-memory module (``model`` names it)."""

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModuleClassifyJob:  # replaces ModelChoice's
        return _module_choice(self)


class ModuleAuditJob(AuditJob):
    """An :class:`AuditJob` whose model is an in-memory module (``model`` names it)."""

    @model_validator(mode="after")
    def _one_weight_source(self) -> ModuleAuditJob:  # replaces ModelChoice's
        return _module_choice(self)


def _spec(kind: type, module_kind: type, spec: Any, fields: dict[str, Any], module: Any) -> Any:
    """Validate ``spec`` (a spec object, a mapping or None) with ``fields`` on top."""
    if spec is not None and not isinstance(spec, (kind, Mapping)):
        raise InvalidInput(f"spec: expected a {kind.__name__} or a mapping of its keys, got {type(spec).__name__}")
    data: dict[str, Any] = {}
    if isinstance(spec, kind):
        data.update(spec.model_dump(exclude_unset=True))
    elif spec is not None:
        data.update(spec)
    data.update(fields)
    model = kind if module is None else module_kind
    if module is not None and not data.get("model"):
        data["model"] = type(module).__name__
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        source = f"ironsight.{kind.__name__[:-3].lower()}()"
        raise InvalidInput("\n".join(problem_lines(exc, source, kind))) from None


def _module_source(spec: Any, module: Any, preprocess: Preprocess | None,
                   class_names: Sequence[str] | None) -> Any:
    """The :class:`ModuleSource` of ``module``; preprocessing and class names default to those
    of a registered model of the same name (a fine-tuned ``resnet50`` in memory)."""
    from ironsight.cluster.models import get_model_info, list_models

    if (preprocess is None or class_names is None) and spec.model in list_models():
        info = get_model_info(spec.model)
        preprocess = preprocess or info.preprocess
        class_names = class_names if class_names is not None else info.class_names
    return ModuleSource(name=spec.model, module=module, preprocess=preprocess,
               class_names=tuple(class_names or ()), allowed_roots=spec.effective_roots())


# --------------------------------------------------------------------------- results


@dataclass
class ClassifyResult:
    """What :func:`classify` did.

    Attributes:
        spec: the validated spec that ran.
        summary: the run's :class:`~ironsight.cluster.pipeline.ClassifySummary` (what
            ``_SUCCESS`` holds; ``summary.render()`` is what the CLI prints).
        run_id: its id in the run history (None when the history could not be opened).
    """

    spec: ClassifyJob
    summary: Any
    run_id: int | None = None

    @property
    def output(self) -> str:
        return self.spec.output

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (rows, error_rows, errors_by_reason, wall_s, ...)."""
        return self.summary.to_json()

    def table(self, columns: Sequence[str] | None = None) -> Any:
        """Every committed output row as one ``pyarrow.Table`` (local or ``s3://`` OUTPUT)."""
        import pyarrow.dataset as pads

        from ironsight.cluster import storage

        loc = storage.resolve(self.spec.output)
        files = sorted(f.path for f in storage.list_dir(loc)
                       if f.base_name.startswith("part-") and f.base_name.endswith(".parquet"))
        return pads.dataset(files, filesystem=loc.fs, format="parquet").to_table(columns=columns)


@dataclass
class AuditOutcome:
    """What :func:`audit` did.

    Attributes:
        spec: the validated spec that ran.
        report: ``report.json`` as a dict (``report["clean"]["accuracy"]``, ``report["conditions"]``,
            ``report["attacks"]``, ``report["gate"]``, ``report["history"]``).
        paths: where the reports went (``json``, ``md``, ``html``, ``predictions``).
        regressions: :class:`~ironsight.jobs.history.Regression` s against the previous run of
            the same named audit (the CLI exits 4 when there are any); empty otherwise.
        run_id: its id in the run history (None when the history could not be opened).
        result: the :class:`~ironsight.jobs.audit.AuditResult` (rows, timings).
    """

    spec: AuditJob
    report: dict[str, Any]
    paths: dict[str, str]
    regressions: list = field(default_factory=list)
    run_id: int | None = None
    result: Any = None

    @property
    def clean_accuracy(self) -> float | None:
        return (self.report.get("clean") or {}).get("accuracy")

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)


# --------------------------------------------------------------------------- the calls


def classify(spec: ClassifyJob | Mapping[str, Any] | None = None, /, *, module: Any = None,
             preprocess: Preprocess | None = None, class_names: Sequence[str] | None = None,
             progress: bool | None = False, verbose: bool = False, **fields: Any) -> ClassifyResult:
    """Label every row of a Parquet corpus, exactly once, as ``ironsight classify`` does.

    Args:
        spec: a :class:`~ironsight.jobs.spec.ClassifyJob`, a mapping of its keys, or None.
        module, preprocess, class_names: an in-memory ``torch.nn.Module`` instead of a
            registered or card-described model (see the module docstring); ``model=`` names it.
        progress: a progress bar (True), log lines (False), or a bar on a terminal (None).
        verbose: Ray's own output too.
        **fields: the spec's keys (``input``, ``output``, ``model``, ``weights``, ``top_k``, ...);
            they replace the spec's.

    Returns:
        :class:`ClassifyResult`: the summary, the run id, ``table()`` for the labels.

    Raises:
        InvalidInput: a keyword, the corpus or the model is wrong (nothing ran; the message
            names the keyword, file or row). JobFailed: the job started and could not finish.

    >>> result = ironsight.classify(input="corpus/", output="labels/", model="demo_cnn",
    ...                             random_weights=True, top_k=3)  # doctest: +SKIP
    >>> result.to_dict()["rows"], result.table(["id", "pred_label_name"])  # doctest: +SKIP
    """
    from ironsight.jobs.run_spec import classify_spec

    job = _spec(ClassifyJob, ModuleClassifyJob, spec, fields, module)
    source = None if module is None else _module_source(job, module, preprocess, class_names)
    summary, record = classify_spec(job, progress, verbose=verbose, source=source)
    return ClassifyResult(spec=job, summary=summary, run_id=record.run_id)


def audit(spec: AuditJob | Mapping[str, Any] | None = None, /, *, module: Any = None,
          preprocess: Preprocess | None = None, class_names: Sequence[str] | None = None,
          progress: bool | None = False, verbose: bool = False, **fields: Any) -> AuditOutcome:
    """Audit a classifier's robustness, as ``ironsight audit`` does; writes report.json/.md/.html
    and predictions.parquet into ``output`` and records the run in the history.

    Args:
        spec: an :class:`~ironsight.jobs.spec.AuditJob`, a mapping of its keys, or None.
        module: an in-memory ``torch.nn.Module`` (the network after normalization; picklable),
            instead of ``model``/``weights``/``model_card``. ``model=`` names it (default: its
            class name); a registered name lends its preprocessing and class names.
        preprocess: the module's :class:`~ironsight.cluster.preprocess.Preprocess`.
        class_names: one name per output logit; the eval set's labels index them.
        progress, verbose: as for :func:`classify`.
        **fields: the spec's keys (``input``, ``output``, ``suite``, ``severities``,
            ``max_images``, ``gate``, ``name``, ...); they replace the spec's.

    Returns:
        :class:`AuditOutcome`: the report dict, report paths, regressions, run id.

    Raises:
        InvalidInput: a keyword, eval set, suite, gate or model is wrong; nothing ran.
        GateFailed: the audit ran and its release gate failed (reports written, run recorded
            as ``gate_failed``). JobFailed: the audit started and could not finish.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
    ...                           torch.nn.Flatten(), torch.nn.Linear(8, 8))
    >>> out = ironsight.audit(input="eval/", output="audit/", module=net, model="tiny",
    ...                       preprocess=ironsight.Preprocess(resize=None, crop=64),
    ...                       class_names=[f"c{i}" for i in range(8)], suite="quick",
    ...                       max_images=200)  # doctest: +SKIP
    >>> out.clean_accuracy, out.paths["html"]  # doctest: +SKIP
    """
    from ironsight.jobs.run_spec import audit_spec

    job = _spec(AuditJob, ModuleAuditJob, spec, fields, module)
    source = None if module is None else _module_source(job, module, preprocess, class_names)
    result, record, regressions = audit_spec(job, progress, verbose=verbose, source=source)
    return AuditOutcome(spec=job, report=result.report, paths=result.paths, regressions=list(regressions),
                        run_id=record.run_id, result=result)
