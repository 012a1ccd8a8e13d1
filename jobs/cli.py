"""The ``ironsight`` command line.

Exit codes: the one table in ``ironsight.cluster.errors`` (docs/cli.md), used by every
command: 0 the job finished (error rows included), 2 bad usage or invalid input (nothing
ran), 1 the job failed, 3 an audit's release gate failed, 4 a named audit regressed against
the previous successful run of the same identity (``ironsight.jobs.history``), 130
interrupted by Ctrl-C (SIGINT), 141 stdout closed early, 143 stopped by SIGTERM (128 + the
signal's number, as a shell reports it).

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
import importlib
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence

from ironsight.cluster.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_REGRESSED,
    EXIT_SIGTERM,
    InvalidInput,
    IronsightError,
)
from ironsight.jobs.cli_parser import Parser, VersionAction, fit_hints, help_formatter
from ironsight.jobs.observability import (
    LOG_FORMATS,
    configure_logging,
    console,
    resolve_format,
)
from ironsight.jobs.run_spec import Terminated, audit_spec, classify_spec
from ironsight.jobs.spec import AuditJob, ClassifyJob, CompareJob
from ironsight.jobs.spec_args import add_spec_arguments, spec_from_args
from ironsight.jobs.spec_file import load_spec

EPILOG_CLASSIFY = textwrap.dedent(
    """\
    examples:
      ironsight classify corpus/ labels/ --model resnet50 --weights resnet50.safetensors
      ironsight classify s3://archive/images/ s3://archive/labels/ --model-card my-model.yaml
      AWS_ENDPOINT_URL=http://minio:9000 ironsight classify s3://b/in s3://b/out --model ...

    INPUT is a Parquet corpus or a folder of JPEG/PNG/WebP files (ids: their relative paths;
    `ironsight pack` turns such a folder into Parquet). OUTPUT gets one Parquet file per input
    shard (id, pred_label, pred_label_name, pred_score, pred_topk_labels, pred_topk_scores,
    error, then any --keep-columns), _manifest.json, and _SUCCESS when complete. Rerunning the
    same command resumes where a crashed run stopped; rerunning a finished job does nothing.
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


EPILOG_COMPARE = textwrap.dedent(
    """\
    examples:
      ironsight compare eval/ cmp/ --model-card a.yaml --model-card b.yaml --objective 'max accuracy s.t. p95_ms <= 20'
      ironsight compare eval/ cmp/ --model resnet18=r18.safetensors --model mobilenet_v3_small=mb.pt
      ironsight compare eval/ cmp/ --model resnet18 --model squeezenet1_1 --random-weights  # speed/memory only
    """
)


# Every command's parser sets ``handler=fn(args) -> exit code`` with ``set_defaults``: the
# commands below in build_parser, and those of these modules, each with
# ``add_commands(subparsers, formatter)``. _dispatch calls it.
COMMAND_MODULES: tuple[str, ...] = ("ironsight.jobs.history", "ironsight.jobs.submit", "ironsight.jobs.deploy_cli", "ironsight.jobs.schedule", "ironsight.jobs.pack")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ironsight",
        description="Bulk-label image archives and audit classifier robustness, on Ray.",
        formatter_class=help_formatter,
        epilog="Run `ironsight COMMAND --help` for a command's options. Start with `ironsight demo`.",
    )
    parser.add_argument("--version", action=VersionAction)
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
        formatter_class=help_formatter,
    )
    add_spec_arguments(p, ClassifyJob)
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(handler=_job_from_flags(ClassifyJob))

    p = sub.add_parser(
        "audit",
        help="stress-test a classifier: conditions x severities, FGSM/PGD, reports, release gate",
        description="Run a robustness suite over a labeled eval set and write report.json, "
        "report.md, report.html and predictions.parquet into OUTPUT. Exit 0 when the audit ran "
        "and the gate passed (or no gate), 3 when the gate failed, 2 for bad input, 1 on failure.",
        epilog=EPILOG_AUDIT,
        formatter_class=help_formatter,
    )
    add_spec_arguments(p, AuditJob)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_job_from_flags(AuditJob))

    p = sub.add_parser(
        "compare",
        help="compare models on one eval set: accuracy, robustness, speed, memory; a recommendation",
        description="Audit several models on the same eval set and suite (images decoded once for "
        "all), profile each for latency, throughput and memory, and write compare.json/.md/.html "
        "into OUTPUT with each model's audit under OUTPUT/models/NAME. Rerunning resumes: a "
        "finished model is not run again. Exit 0 done, 2 bad input, 1 failure.",
        epilog=EPILOG_COMPARE,
        formatter_class=help_formatter,
    )
    add_spec_arguments(p, CompareJob)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_job_from_flags(CompareJob))

    p = sub.add_parser("conditions", help="list the registered conditions and attacks", formatter_class=help_formatter)
    csub = p.add_subparsers(dest="conditions_command", metavar="{list}", required=True)
    csub.add_parser("list", help="conditions with their family and description, then attacks and suites")
    p.set_defaults(handler=_conditions)

    p = sub.add_parser(
        "run",
        help="run a job spec (YAML) on the embedded Ray or --address",
        description="Run the job a YAML spec describes. Keys are the flags of its kind "
        "(`ironsight classify --help`), with underscores: top_k: 3.",
        formatter_class=help_formatter,
    )
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "validate",
        help="check a job spec (and the card, suite and gate it names), or one of those files",
        description="Check a file as `ironsight run` would read it, without starting Ray: a job "
        "spec with the local model card, suite and gate it names, or a gate, suite or model card "
        "on its own (the kind is told from the keys, or --kind). Relative paths in a spec start "
        "at the spec's folder. Exit 0 valid, 2 invalid; errors name the file and the field.",
        formatter_class=help_formatter,
        epilog_factory=_validate_keys,
    )
    p.add_argument("spec", metavar="FILE.yaml")
    p.add_argument("--kind", choices=("spec", "gate", "suite", "card"), default=None,
                   help="what FILE.yaml is (default: told from its keys)")
    p.set_defaults(handler=_validate)

    p = sub.add_parser("models", help="list the registered models or show one", formatter_class=help_formatter)
    msub = p.add_subparsers(dest="models_command", metavar="{list,show}", required=True)
    pl = msub.add_parser("list", help="registered models, their input sizes and classes")
    pl.add_argument("filter", nargs="?", default=None, help="shell-style filter, e.g. 'resnet*'")
    pl.set_defaults(handler=_models_list)
    ps = msub.add_parser("show", help="one model's weights version, preprocessing, classes and size")
    ps.add_argument("name")
    ps.add_argument("--weights-version", default=None, metavar="IMAGENET1K_V1",
                    help="a torchvision weight version other than the DEFAULT (listed by `show NAME`)")
    ps.set_defaults(handler=_models_show)

    p = sub.add_parser(
        "demo",
        help="generate a labeled image corpus, train the demo CNN, and bulk-label the corpus",
        description="The whole bulk-labeling path on this machine, with data it makes itself: "
        "a procedurally generated corpus of shape images, a small CNN trained on CPU (cached), "
        "and `classify` on an embedded Ray, scored against the known labels.",
        formatter_class=help_formatter,
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
    p.set_defaults(handler=_demo)
    dsub = p.add_subparsers(dest="demo_command", metavar="{compare}", required=False)
    pc = dsub.add_parser(
        "compare", formatter_class=help_formatter,
        help="train two more small models of other shapes and compare them with the demo CNN",
        description="Train two small models of other shapes than the demo CNN on CPU (seconds "
        "each; cached), then `ironsight compare` all three on demo eval images with the quick "
        "suite: accuracy, robustness, latency, memory, and a recommendation.",
    )
    pc.add_argument("--workdir", default="ironsight-demo", help="where data and outputs go (default: ./ironsight-demo)")
    pc.add_argument("--images", type=int, default=300, help="eval images compared (default: 300)")
    pc.add_argument("--actors", type=int, default=None, help="predictor actors (default: sized to the cores)")
    pc.add_argument("--retrain", action="store_true", help="train the models even if cached")
    pc.add_argument("--no-progress", action="store_true", help="plain log lines instead of progress bars")
    pc.set_defaults(handler=_demo_compare)

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub, help_formatter)
    return parser


def _validate_keys() -> str:
    """``validate --help``'s epilog: the keys of each kind of file, from the models that check them."""
    from ironsight.cluster.models.card import ModelCard
    from ironsight.jobs.spec import SPEC_KINDS
    from ironsight.robustness.gate import Gate
    from ironsight.robustness.suites import _SuiteModel

    kinds: list[tuple[str, Iterable[str]]] = [
        (f"spec (kind: {name})", model.model_fields) for name, model in SPEC_KINDS.items()
    ]
    kinds += [("gate", Gate.model_fields), ("suite", _SuiteModel.model_fields), ("card", ModelCard.model_fields)]
    lines = ["keys of each kind (a spec's keys are the options of `ironsight classify` or",
             "`ironsight audit` with underscores: `ironsight classify --top-k 3` is top_k: 3):"]
    for label, keys in kinds:
        body = textwrap.fill(", ".join(keys), width=96, initial_indent="    ", subsequent_indent="    ")
        lines.append(f"  {label}:\n{body}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``ironsight`` command; returns its exit code (see the module docstring).

    A closed stdout (``ironsight models list | head -2``) ends the command quietly with 141
    (128 + SIGPIPE, as a shell reports a command SIGPIPE ended): stdout is pointed at
    ``/dev/null``, as the Python docs recommend, so that the final flush raises nothing.
    """
    try:
        try:
            return _main(argv)
        finally:  # --help and --version leave through SystemExit: flush for them too
            sys.stdout.flush()  # a broken pipe shows here, not at interpreter exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (a test's capture)
            pass
        finally:
            os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str] | None) -> int:
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
        console(f"ironsight: error: {fit_hints(str(exc), parser)}", logging.ERROR)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            console(f"ironsight: interrupted by {exc.signal_name}; committed shards are kept, rerun "
                    "the same command to resume", logging.ERROR)
            return EXIT_SIGTERM
        console("ironsight: interrupted; committed shards are kept, rerun to resume", logging.ERROR)
        return EXIT_INTERRUPTED


def _progress(args: argparse.Namespace) -> bool | None:
    return False if getattr(args, "no_progress", False) else None


def _dispatch(args: argparse.Namespace) -> int:
    return args.handler(args)  # every command sets one (build_parser)


# --- the commands' handlers: each takes the parsed arguments and returns the exit code -------


def _job_from_flags(model: type[ClassifyJob | AuditJob | CompareJob]) -> Callable[[argparse.Namespace], int]:
    """``classify``, ``audit``, ``compare``: the flags validated into the kind's spec, then run."""

    def handler(args: argparse.Namespace) -> int:
        return _run_job(spec_from_args(model, args), args)

    return handler


def _run(args: argparse.Namespace) -> int:
    """``run SPEC.yaml``: the spec, its card, suite and gate checked before Ray, then run."""
    return _run_job(load_spec(args.spec, check_files=True), args)


def _run_job(spec: ClassifyJob | AuditJob | CompareJob, args: argparse.Namespace) -> int:
    progress = _progress(args)
    if isinstance(spec, CompareJob):
        return _run_compare(spec, progress, verbose=args.verbose)
    if isinstance(spec, AuditJob):
        return _run_audit(spec, progress, verbose=args.verbose)
    return _run_classify(spec, progress, verbose=args.verbose)


def _validate(args: argparse.Namespace) -> int:
    from ironsight.jobs.spec_checks import validate_file

    print(validate_file(args.spec, args.kind))
    return 0


def _demo(args: argparse.Namespace) -> int:
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
        verbose=args.verbose,
    )


def _demo_compare(args: argparse.Namespace) -> int:
    from ironsight.jobs.demo import run_demo_compare

    return run_demo_compare(workdir=args.workdir, images=args.images, retrain=args.retrain,
                            actors=args.actors, progress=_progress(args), verbose=args.verbose)


def _run_compare(spec: CompareJob, progress: bool | None, *, verbose: bool = False) -> int:
    from ironsight.jobs.compare_cli import compare_spec, summary_lines

    result, _ = compare_spec(spec, progress, verbose=verbose)
    print("\n".join(summary_lines(result)))
    return 0


def _run_classify(spec: ClassifyJob, progress: bool | None, *, verbose: bool = False) -> int:
    summary, _ = classify_spec(spec, progress, verbose=verbose)
    print(summary.render())
    return 0


def _run_audit(spec: AuditJob, progress: bool | None, *, verbose: bool = False) -> int:
    result, record, regressions = audit_spec(spec, progress, verbose=verbose)
    # imported after the audit, so that a bad input is refused before torch is imported
    from ironsight.robustness.report.text import text_summary

    print(text_summary(result.report))
    print(f"reports: {result.paths.get('html')} (and report.json, report.md, predictions.parquet)")
    if regressions:
        console(record.regression_text())
        return EXIT_REGRESSED
    return 0


def _conditions(args: argparse.Namespace) -> int:
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


def _models_list(args: argparse.Namespace) -> int:
    from ironsight.cluster import models

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


def _models_show(args: argparse.Namespace) -> int:
    from ironsight.cluster import models

    print(models.describe(models.get_model_info(args.name, args.weights_version)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
