"""`ironsight deploy render`: KubeRay manifests for one job spec, once or on a schedule
(`ironsight deploy static` writes the reference manifests of deploy/kuberay/).

The spec is validated first, with the local model card, suite and gate it names
(`ironsight.jobs.spec_file.load_spec(check_files=True)`, the checks of `ironsight validate`), then
stored verbatim in a ConfigMap that the RayJob's entrypoint (`ironsight run
/etc/ironsight/spec.yaml`) reads; those files go into the same ConfigMap, mounted where the
spec's paths resolve in the pod. See `ironsight.jobs.k8s.render_manifests` for the files and
the security properties they keep.

| flag                      | what is written into `--out DIR`                                  |
|---------------------------|-------------------------------------------------------------------|
| (no `--cron`)             | `configmap-spec.yaml`, `networkpolicy.yaml`, `rayjob.yaml`        |
| `--cron` (`--variant raycronjob`, the default) | the same with `raycronjob.yaml` instead of `rayjob.yaml` |
| `--cron --variant cronjob` | the same with `cronjob-submit-rayjob.yaml` (plain Kubernetes)    |
| `--cron --variant all`    | `DIR/raycronjob/` and `DIR/cronjob/`, each complete; apply one    |

One folder holds one workload, so `kubectl apply -f DIR` never schedules a job twice; a
workload file left in DIR by an earlier render of another variant is removed.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import MAX_CONFIG_BYTES
from ironsight.jobs.k8s import (
    DEFAULT_HISTORY_SECRET,
    DEFAULT_IMAGE,
    HISTORY_ENV,
    VARIANTS,
    pod_path,
    render_manifests,
    write_manifests,
    write_static_manifests,
)
from ironsight.jobs.spec_file import load_spec, relative_paths_as_written

__all__ = ["add_commands", "k8s_name", "referenced_files"]

EPILOG = textwrap.dedent(
    """\
    examples:
      ironsight deploy render audit.yaml --out k8s/
      ironsight deploy render nightly.yaml --cron "0 2 * * *" --timezone Europe/Berlin \\
          --image registry.example.com/ironsight:0.1.0 --namespace ml --out k8s/nightly
      kubectl apply -f k8s/nightly/

    Without --cron: configmap-spec.yaml, networkpolicy.yaml, rayjob.yaml (one run).
    With --cron: raycronjob.yaml (KubeRay RayCronJob), or with --variant cronjob a plain
    CronJob that creates the RayJob (cronjob-submit-rayjob.yaml); --variant all writes each
    into its own folder, DIR/raycronjob/ and DIR/cronjob/: apply one of the two, not both.
    The local gate, suite and model card the spec names are put into the spec's ConfigMap and
    mounted where the spec's paths point in the pod. Weights, input and output must be on
    storage the pods can read (s3://).
    Created out of band (deploy/README.md): the object-store Secret (ironsight-object-store)
    and the run-history Secret (--history-secret, key url: a PostgreSQL URL).
    """
)

# Every workload file a render may write: one of them per folder.
_WORKLOAD_FILES = ("rayjob.yaml", "raycronjob.yaml", "cronjob-submit-rayjob.yaml")
# Spec fields naming a small YAML file the job reads: shipped in the ConfigMap when local.
_CONFIG_FIELDS = ("model_card", "suite", "gate")
# Spec fields naming data the pods must reach themselves (too large for a ConfigMap).
_DATA_FIELDS = ("input", "output", "weights", "baseline")


def k8s_name(job_name: str) -> str:
    """A Kubernetes object name from a job name: lower case, '-' for anything else.

    >>> k8s_name("Nightly_Audit v2")
    'nightly-audit-v2'
    """
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", job_name.lower())).strip("-")


def _is_local(value: str | None) -> bool:
    return bool(value) and ("://" not in value or value.startswith("file://"))


def referenced_files(spec: Any) -> tuple[dict[str, str], list[str]]:
    """The local files the spec names, read here, and notes about local data paths.

    Returns:
        (path as the spec names it -> text, for `render_manifests(files=...)`; one note per
        local data path, which a pod cannot read from this machine).
    """
    written = relative_paths_as_written(spec)
    files: dict[str, str] = {}
    notes: list[str] = []
    for field in _CONFIG_FIELDS:
        value = getattr(spec, field, None)
        if not _is_local(value) or (field == "suite" and _builtin_suite(value)):
            continue  # s3://, or a built-in suite name
        loc = storage.resolve(value)
        raw = storage.read_bytes(loc, max_bytes=MAX_CONFIG_BYTES, what=field.replace("_", " "))
        try:
            files[written.get(field, value)] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{field}: {value} is not UTF-8 text") from None
        if field == "model_card":
            from ironsight.cluster.models.card import load_card

            weights = load_card(value).weights  # as the card names it
            if _is_local(weights):
                card_in_pod = pod_path(written.get(field, value))
                in_pod = posixpath.normpath(posixpath.join(posixpath.dirname(card_in_pod),
                                                           weights.removeprefix("file://")))
                notes.append(
                    f"model card {written.get(field, value)} names local weights {weights}: the "
                    f"pods would read {in_pod}, which is not in the ConfigMap (weights are too "
                    "large for one): put them on s3:// (or on shared storage mounted at that "
                    "path) and name that in the card"
                )
    for field in _DATA_FIELDS:
        value = getattr(spec, field, None)
        if _is_local(value):
            why = ("weights are too large for a ConfigMap" if field == "weights"
                   else "pod disks disappear with the cluster")
            notes.append(
                f"{field}: {written.get(field, value)} is a local path: the pods cannot read this "
                f"machine's disk ({why}); use an s3:// URI, or shared storage mounted in the pods "
                f"at {pod_path(written.get(field, value))}"
            )
    return files, notes


def _builtin_suite(value: str) -> bool:
    from ironsight.robustness.suites import list_suites

    return value in list_suites()


def _remove_stale(out: Path, keep: set[str], names: tuple[str, ...] = _WORKLOAD_FILES) -> list[Path]:
    """Files named `names` that an earlier render left in `out` and this one does not write."""
    stale = [out / n for n in names if n not in keep and (out / n).is_file()]
    for path in stale:
        path.unlink()
    return stale


def _render(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, check_files=True)  # what `ironsight validate` checks
    spec_text = storage.read_bytes(
        storage.resolve(args.spec), max_bytes=MAX_CONFIG_BYTES, what="spec file"
    ).decode("utf-8")
    job_name = args.name or k8s_name(spec.name)
    if not job_name:
        raise InvalidInput(f"{args.spec}: name {spec.name!r} gives no Kubernetes name; pass --name")
    if args.variant is not None and args.cron is None:
        raise InvalidInput("--variant chooses the scheduler of --cron; without --cron a single "
                           "RayJob is rendered")
    variant = args.variant or VARIANTS[0]
    history = None if args.no_history else args.history_secret
    files, notes = referenced_files(spec)
    variants = list(VARIANTS) if variant == "all" else [variant]
    rendered = {
        v: render_manifests(
            spec_text,
            job_name=job_name,
            cron=args.cron,
            timezone=args.timezone,
            image=args.image,
            namespace=args.namespace,
            variant=v,
            files=files,
            history_secret=history,
        )
        for v in variants
    }  # every variant renders before anything is written
    out = Path(args.out)
    targets = {v: out / v for v in variants} if len(variants) > 1 else {variants[0]: out}
    if len(variants) > 1 and out.is_dir():
        # A render without --variant all wrote here: `kubectl apply -f DIR` would still see it.
        for path in _remove_stale(out, set(), (*_WORKLOAD_FILES, "configmap-spec.yaml",
                                               "networkpolicy.yaml")):
            print(f"removed {path} (left by an earlier render; one workload per folder)")
    for v, manifests in rendered.items():
        if targets[v].is_dir():
            for path in _remove_stale(targets[v], set(manifests)):
                print(f"removed {path} (left by an earlier render; one workload per folder)")
        for path in write_manifests(manifests, targets[v]):
            print(path)
    for name in files:
        print(f"mounted {name} at {pod_path(name)} (ConfigMap {job_name}-spec)")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if history:
        print(f"run history: {HISTORY_ENV} comes from Secret {history!r} (key url); create it "
              f"before applying (deploy/README.md)")
    else:
        print("run history: none (--no-history): each run starts with an empty history, so a "
              "regression against the previous run is never reported")
    if args.cron is None:
        print(f"rendered RayJob {job_name!r} in namespace {args.namespace!r}: kubectl apply -f {out}")
        return 0
    what = {"raycronjob": "RayCronJob", "cronjob": "CronJob creating a RayJob"}
    for v, target in targets.items():
        print(f"rendered {what[v]} {job_name!r} ({args.cron}, {args.timezone}) in namespace "
              f"{args.namespace!r}: kubectl apply -f {target}")
    if len(targets) > 1:
        print("apply one of the two folders, not both: each schedules the same job")
    return 0


def _static(args: argparse.Namespace) -> int:
    for path in write_static_manifests(args.out):
        print(path)
    return 0


def add_commands(subparsers: Any, formatter: Any) -> None:
    """Add `ironsight deploy render` and `ironsight deploy static`."""
    p = subparsers.add_parser(
        "deploy",
        help="render KubeRay manifests (RayJob, or RayCronJob with --cron) for a job spec",
        description="Kubernetes deployment of job specs on KubeRay.",
        formatter_class=formatter,
    )
    dsub = p.add_subparsers(dest="deploy_command", metavar="{render,static}", required=True)
    r = dsub.add_parser(
        "render",
        help="validate a spec and write the manifests that run it",
        description="Validate SPEC.yaml (and the local card, suite and gate it names) and write "
        "the manifests that run it on a Kubernetes cluster with the KubeRay operator: a single "
        "RayJob, or with --cron a RayCronJob (or, with --variant cronjob, a plain CronJob).",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    r.add_argument("spec", metavar="SPEC.yaml", help="job spec (validated, stored verbatim)")
    r.add_argument("--out", required=True, metavar="DIR", help="directory to write the YAML into")
    r.add_argument("--cron", metavar="'M H DOM MON DOW'", default=None,
                   help="5-field cron schedule, e.g. '0 2 * * *'; without it a single RayJob")
    r.add_argument("--timezone", default="UTC", metavar="TZ",
                   help="IANA time zone of --cron (default: UTC)")
    r.add_argument("--variant", choices=(*VARIANTS, "all"), default=None,
                   help="scheduler of --cron: raycronjob (KubeRay RayCronJob, default), cronjob "
                   "(plain CronJob that creates the RayJob), or all (DIR/raycronjob/ and "
                   "DIR/cronjob/; apply one)")
    r.add_argument("--image", default=DEFAULT_IMAGE, metavar="IMAGE",
                   help=f"Ironsight container image (default: {DEFAULT_IMAGE})")
    r.add_argument("--namespace", default="ironsight", metavar="NS",
                   help="namespace of every object (default: ironsight)")
    r.add_argument("--name", default=None, metavar="NAME",
                   help="object name (default: the spec's name, lower-cased)")
    r.add_argument("--history-secret", default=DEFAULT_HISTORY_SECRET, metavar="NAME",
                   help=f"Secret whose key `url` is the run-history database URL, read as "
                   f"{HISTORY_ENV} (default: {DEFAULT_HISTORY_SECRET})")
    r.add_argument("--no-history", action="store_true",
                   help="no history database: every run starts empty and no regression against "
                   "the previous run is ever reported")
    r.set_defaults(handler=_render)
    st = dsub.add_parser(
        "static",
        help="write the reference manifests kept under deploy/kuberay/",
        description="Write the reference manifests of the repository's deploy/kuberay/ folder "
        "(RayCluster, NetworkPolicy, PodMonitor, an audit RayJob, the nightly RayCronJob and its "
        "plain-CronJob alternative) from the same builders as `deploy render`; tests/deploy "
        "checks that the committed files match.",
        epilog="example:\n  ironsight deploy static --out deploy/kuberay",
        formatter_class=formatter,
    )
    st.add_argument("--out", required=True, metavar="DIR", help="directory to write the YAML into")
    st.set_defaults(handler=_static)
