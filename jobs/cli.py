"""The ``ironsight`` command line.

Exit codes: 0 the job finished (error rows included), 2 bad usage or invalid input (nothing
ran), 1 the job failed, 3 an audit's release gate failed, 4 a named audit regressed against
the previous successful run of the same identity (``ironsight.jobs.history``), 130
interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (128 + the signal's number, as a shell
reports it).

SIGTERM (``kill``, ``docker stop``, Kubernetes deleting the pod) stops a ``classify`` or
``audit`` the way Ctrl-C does: the run unwinds, Ray is shut down, the run is recorded as
failed in the history, and one line is printed:

    ironsight: interrupted by SIGTERM; committed shards are kept, rerun the same command to resume

Ray's own SIGTERM handling (``sys.exit`` from Python, and a C++ handler that prints a stack)
is replaced while the job runs. A second SIGTERM while the first unwinds is ignored, so
cleanup is not cut short; SIGKILL still ends everything at once (committed shards stay).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ironsight.cluster.errors import InvalidInput, IronsightError
from ironsight.jobs.observability import (
    LOG_FORMATS,
    configure_logging,
    console,
    job_context,
    resolve_format,
)
from ironsight.jobs.spec import AuditJob, ClassifyJob, add_spec_arguments, load_spec, spec_from_args

EPILOG_CLASSIFY = textwrap.dedent(
    """\
    examples:
      ironsight classify corpus/ labels/ --model resnet50 --weights resnet50.safetensors
      ironsight classify s3://archive/images/ s3://archive/labels/ --model-card my-model.yaml
      AWS_ENDPOINT_URL=http://minio:9000 ironsight classify s3://b/in s3://b/out --model ...

    OUTPUT gets one Parquet file per input shard (id, label, label_name, score, topk_labels,
    topk_scores, error), _manifest.json, and _SUCCESS when complete. Rerunning the same
    command resumes where a crashed run stopped; rerunning a finished job does nothing.
    """
)


EPILOG_AUDIT = textwrap.dedent(
    """\
    examples:
      ironsight audit eval/ audit-out/ --model-card model.yaml --suite standard
      ironsight audit eval/ out/ --model resnet50 --weights r50.safetensors --severities 1,3,5 \\
          --baseline last-night/report.json --gate gate.yaml
    """
)


# Modules that contribute subcommands: each has ``add_commands(subparsers, formatter)``, and
# each parser it adds sets ``handler=fn(args) -> exit code`` with ``set_defaults``.
COMMAND_MODULES: tuple[str, ...] = ("ironsight.jobs.history", "ironsight.jobs.submit", "ironsight.jobs.deploy_cli", "ironsight.jobs.schedule")


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironsight",
        description="Bulk-label image archives and audit classifier robustness, on Ray.",
        formatter_class=_formatter,
        epilog="Run `ironsight COMMAND --help` for a command's options. Start with `ironsight demo`.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details and Ray's own output")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None,
        help="text (default) or json: one JSON object per log record on stderr, with ts, level, "
        "logger, message and the job's fields; progress becomes records with rows_done, "
        "rows_total, images_per_s, error_rows, eta_s (default: $IRONSIGHT_LOG_FORMAT or text)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "classify",
        help="label every image of a Parquet corpus with top-k classes, exactly once",
        description="Label every row of INPUT with the model's top-k classes, into OUTPUT.",
        epilog=EPILOG_CLASSIFY,
        formatter_class=_formatter,
    )
    add_spec_arguments(p, ClassifyJob)
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")

    p = sub.add_parser(
        "audit",
        help="stress-test a classifier: conditions x severities, FGSM/PGD, reports, release gate",
        description="Run a robustness suite over a labeled eval set and write report.json, "
        "report.md, report.html and predictions.parquet into OUTPUT. Exit 0 when the audit ran "
        "and the gate passed (or no gate), 3 when the gate failed, 2 for bad input, 1 on failure.",
        epilog=EPILOG_AUDIT,
        formatter_class=_formatter,
    )
    add_spec_arguments(p, AuditJob)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("conditions", help="list the registered conditions and attacks", formatter_class=_formatter)
    csub = p.add_subparsers(dest="conditions_command", metavar="{list}", required=True)
    csub.add_parser("list", help="conditions with their family and description, then attacks and suites")

    p = sub.add_parser(
        "run",
        help="run a job spec (YAML) on the embedded Ray or --address",
        description="Run the job a YAML spec describes. Keys are the flags of its kind "
        "(`ironsight classify --help`), with underscores: top_k: 3.",
        formatter_class=_formatter,
    )
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")

    p = sub.add_parser(
        "validate",
        help="check a job spec (and the card, suite and gate it names), or one of those files",
        description="Check a file as `ironsight run` would read it, without starting Ray: a job "
        "spec with the local model card, suite and gate it names, or a gate, suite or model card "
        "on its own (the kind is told from the keys, or --kind). Relative paths in a spec start "
        "at the spec's folder. Exit 0 valid, 2 invalid; errors name the file and the field.",
        formatter_class=_formatter,
    )
    p.add_argument("spec", metavar="FILE.yaml")
    p.add_argument("--kind", choices=("spec", "gate", "suite", "card"), default=None,
                   help="what FILE.yaml is (default: told from its keys)")

    p = sub.add_parser("models", help="list the registered models or show one", formatter_class=_formatter)
    msub = p.add_subparsers(dest="models_command", metavar="{list,show}", required=True)
    pl = msub.add_parser("list", help="registered models, their input sizes and classes")
    pl.add_argument("filter", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    ps = msub.add_parser("show", help="one model's weights version, preprocessing, classes and size")
    ps.add_argument("name")
    ps.add_argument("--weights-version", default=None, metavar="IMAGENET1K_V1",
                    help="a torchvision weight version other than the DEFAULT (listed by `show NAME`)")

    p = sub.add_parser(
        "demo",
        help="generate a labeled image corpus, train the demo CNN, and bulk-label the corpus",
        description="The whole bulk-labeling path on this machine, with data it makes itself: "
        "a procedurally generated corpus of shape images, a small CNN trained on CPU (cached), "
        "and `classify` on an embedded Ray, scored against the known labels.",
        formatter_class=_formatter,
    )
    p.add_argument("--workdir", default="ironsight-demo", help="where data and outputs go (default: ./ironsight-demo)")
    p.add_argument("--corpus-size", type=int, default=20_000, help="images to bulk-label (default: 20000)")
    p.add_argument("--eval-size", type=int, default=2_000, help="labeled eval images (default: 2000)")
    p.add_argument("--train-size", type=int, default=None, help="training images (default: the trainer's)")
    p.add_argument("--actors", type=int, default=None, help="predictor actors (default: sized to the cores)")
    p.add_argument("--retrain", action="store_true", help="train the demo model even if one is cached")
    p.add_argument("--audit-images", type=int, default=1_000,
                   help="eval images the demo audits with the quick suite; 0 skips the audit (default: 1000)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub, _formatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log_format = resolve_format(args.log_format)
    except InvalidInput as exc:
        parser.error(str(exc))  # exits 2
    configure_logging(log_format, verbose=args.verbose)
    try:
        return _dispatch(args)
    except IronsightError as exc:
        console(f"ironsight: error: {exc}", logging.ERROR)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            console(f"ironsight: interrupted by {exc.signal_name}; committed shards are kept, rerun "
                    "the same command to resume", logging.ERROR)
            return EXIT_SIGTERM
        console("ironsight: interrupted; committed shards are kept, rerun to resume", logging.ERROR)
        return 130


EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds the job like Ctrl-C does (``finally`` blocks run, Ray shuts down)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")


@contextmanager
def sigterm_interrupts() -> Iterator[Callable[[], None]]:
    """Make SIGTERM raise :class:`Terminated` in the main thread for the duration of the block.

    Yields ``install``: call it again after ``ray.init``, which puts its own handler in place
    (``sys.exit(15)``, plus a C++ one that prints a stack). The handler raises once; later
    SIGTERMs are ignored while the job unwinds. The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    raised = False

    def on_sigterm(signum: int, _frame: object) -> None:
        nonlocal raised
        if raised:
            return
        raised = True
        raise Terminated(signum)

    def install() -> None:
        signal.signal(signal.SIGTERM, on_sigterm)

    previous = signal.getsignal(signal.SIGTERM)
    install()
    try:
        yield install
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is not None:
        return handler(args)
    if args.command == "classify":
        spec = spec_from_args(ClassifyJob, args)
        return _run_classify(spec, _progress(args), verbose=args.verbose)
    if args.command == "validate":
        from ironsight.jobs.spec import validate_file

        print(validate_file(args.spec, args.kind))
        return 0
    if args.command == "run":
        spec = load_spec(args.spec, check_files=True)  # a bad card, suite or gate: before Ray
        if isinstance(spec, AuditJob):
            return _run_audit(spec, _progress(args), verbose=args.verbose)
        return _run_classify(spec, _progress(args), verbose=args.verbose)
    if args.command == "audit":
        return _run_audit(spec_from_args(AuditJob, args), _progress(args), verbose=args.verbose)
    if args.command == "conditions":
        return _conditions()
    if args.command == "models":
        return _models(args)
    if args.command == "demo":
        from ironsight.jobs.demo import run_demo

        return run_demo(
            workdir=args.workdir,
            corpus_size=args.corpus_size,
            eval_size=args.eval_size,
            train_size=args.train_size,
            actors=args.actors,
            retrain=args.retrain,
            audit_images=args.audit_images,
            progress=_progress(args),
        )
    raise InvalidInput(f"unknown command {args.command!r}")


def _run_classify(spec: ClassifyJob, progress: bool | None, *, verbose: bool = False) -> int:
    from ironsight.cluster.pipeline import ClassifyConfig, plan_classify, run_classify
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.history import RunRecorder

    cfg = ClassifyConfig(
        input=spec.input,
        output=spec.output,
        source=spec.source(),
        top_k=spec.top_k,
        batch_size=spec.batch_size,
        actors=spec.actors,
        image_column=spec.image_column,
        id_column=spec.id_column,
        max_rows_per_shard=spec.max_rows_per_shard,
        skip_bad_files=spec.skip_bad_files,
        overwrite=spec.overwrite,
        device=spec.device,
        torch_compile=spec.torch_compile,
        progress=progress,
        allowed_roots=spec.effective_roots(),
    )
    with sigterm_interrupts() as reinstall, RunRecorder(spec) as record, job_context(spec, record.run_id):
        plan = plan_classify(cfg)  # footers only: bad files are refused before Ray starts
        with connect(spec.address, quiet=not verbose):
            reinstall()  # ray.init replaced it
            summary = run_classify(cfg, plan=plan)
        record.classify_succeeded(summary)
    print(summary.render())
    return 0


def _run_audit(spec: AuditJob, progress: bool | None, *, verbose: bool = False) -> int:
    from ironsight.cluster.raycluster import connect
    from ironsight.jobs.audit import AuditConfig, resolve_suite, run_audit
    from ironsight.jobs.history import EXIT_REGRESSED, RunRecorder
    from ironsight.robustness.report import text_summary

    cfg = AuditConfig(
        input=spec.input,
        output=spec.output,
        source=spec.source(),
        suite=resolve_suite(spec.suite, spec.severities),
        label_column=spec.label_column,
        image_column=spec.image_column,
        id_column=spec.id_column,
        max_images=spec.max_images,
        seed=spec.seed,
        baseline=spec.baseline,
        gate=spec.gate,
        overwrite=spec.overwrite,
        batch_size=spec.batch_size,
        actors=spec.actors,
        device=spec.device,
        progress=progress,
        allowed_roots=spec.effective_roots(),
    )
    with sigterm_interrupts() as reinstall, RunRecorder(spec) as record, job_context(spec, record.run_id):
        with connect(spec.address, quiet=not verbose):
            reinstall()  # ray.init replaced it
            # the run history judges the audit before report.json is written (its "history")
            result = run_audit(dataclasses.replace(cfg, history=record.judge_audit))
        regressions = record.audit_finished(result.report)
    print(text_summary(result.report))
    print(f"reports: {result.paths.get('html')} (and report.json, report.md, predictions.parquet)")
    if regressions:
        console(record.regression_text())
        return EXIT_REGRESSED
    return 0


def _conditions() -> int:
    from ironsight.robustness.attacks import list_attacks
    from ironsight.robustness.conditions import SEVERITIES, get_condition, list_conditions
    from ironsight.robustness.suites import list_suites

    names = list_conditions()
    width = max(len(n) for n in names)
    print(f"conditions (severities {', '.join(map(str, SEVERITIES))}):")
    for name in names:
        c = get_condition(name)
        tag = " [ImageNet-C]" if c.imagenet_c else ""
        print(f"  {name:<{width}}  {c.family:<10} {c.description}{tag}")
    print(f"attacks: {', '.join(list_attacks())}")
    print(f"suites: {', '.join(list_suites())} (or a suite YAML file)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from ironsight.cluster import models

    if args.models_command == "list":
        rows = models.summary_rows()
        if args.filter:
            keep = set(models.list_models(args.filter))
            rows = [r for r in rows if r[0] in keep]
        if not rows:
            raise InvalidInput(f"no registered model matches {args.filter!r}; try `ironsight models list`")
        widths = [max(len(str(r[i])) for r in rows + [("name", "input", "classes", "")]) for i in range(3)]
        print(f"{'name':<{widths[0]}}  {'input':<{widths[1]}}  {'classes':>{widths[2]}}  description")
        for name, size, classes, desc in rows:
            print(f"{name:<{widths[0]}}  {size!s:<{widths[1]}}  {classes!s:>{widths[2]}}  {desc}")
        return 0
    print(models.describe(models.get_model_info(args.name, args.weights_version)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
