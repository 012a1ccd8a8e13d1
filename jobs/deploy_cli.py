"""`ironsight deploy render`: KubeRay manifests for one job spec, once or on a schedule.

The spec is validated first (`ironsight.jobs.spec.load_spec`), then stored verbatim in a ConfigMap
that the RayJob's entrypoint (`ironsight run /etc/ironsight/spec.yaml`) reads; see
`ironsight.jobs.k8s.render_manifests` for the files and the security properties they keep.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path
from typing import Any

from ironsight.cluster.errors import InvalidInput
from ironsight.jobs.k8s import DEFAULT_IMAGE, render_manifests, write_manifests
from ironsight.jobs.spec import load_spec

__all__ = ["add_commands", "k8s_name"]

EPILOG = textwrap.dedent(
    """\
    examples:
      ironsight deploy render audit.yaml --out k8s/
      ironsight deploy render nightly.yaml --cron "0 2 * * *" --timezone Europe/Berlin \\
          --image registry.example.com/ironsight:0.1.0 --namespace ml --out k8s/nightly
      kubectl apply -f k8s/nightly/

    Without --cron: configmap-spec.yaml, networkpolicy.yaml, rayjob.yaml (one run).
    With --cron: raycronjob.yaml (KubeRay RayCronJob) and, as a plain-Kubernetes
    alternative, cronjob-submit-rayjob.yaml; apply one of the two, not both.
    The object-store credentials Secret (ironsight-object-store) and the Ray token are
    created out of band (deploy/README.md).
    """
)


def k8s_name(job_name: str) -> str:
    """A Kubernetes object name from a job name: lower case, '-' for anything else.

    >>> k8s_name("Nightly_Audit v2")
    'nightly-audit-v2'
    """
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", job_name.lower())).strip("-")


def _render(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    spec_text = Path(args.spec).read_text(encoding="utf-8")
    job_name = args.name or k8s_name(spec.name)
    if not job_name:
        raise InvalidInput(f"{args.spec}: name {spec.name!r} gives no Kubernetes name; pass --name")
    files = render_manifests(
        spec_text,
        job_name=job_name,
        cron=args.cron,
        timezone=args.timezone,
        image=args.image,
        namespace=args.namespace,
    )
    for path in write_manifests(files, args.out):
        print(path)
    what = f"RayCronJob {job_name!r} ({args.cron}, {args.timezone})" if args.cron else (
        f"RayJob {job_name!r}")
    print(f"rendered {what} in namespace {args.namespace!r}: kubectl apply -f {args.out}")
    return 0


def add_commands(subparsers: Any, formatter: Any) -> None:
    """Add `ironsight deploy render`."""
    p = subparsers.add_parser(
        "deploy",
        help="render KubeRay manifests (RayJob, or RayCronJob with --cron) for a job spec",
        description="Kubernetes deployment of job specs on KubeRay.",
        formatter_class=formatter,
    )
    dsub = p.add_subparsers(dest="deploy_command", metavar="{render}", required=True)
    r = dsub.add_parser(
        "render",
        help="validate a spec and write the manifests that run it",
        description="Validate SPEC.yaml and write the manifests that run it on a Kubernetes "
        "cluster with the KubeRay operator: a single RayJob, or with --cron a RayCronJob "
        "(plus a plain CronJob alternative).",
        epilog=EPILOG,
        formatter_class=formatter,
    )
    r.add_argument("spec", metavar="SPEC.yaml", help="job spec (validated, stored verbatim)")
    r.add_argument("--out", required=True, metavar="DIR", help="directory to write the YAML into")
    r.add_argument("--cron", metavar="'M H DOM MON DOW'", default=None,
                   help="5-field cron schedule, e.g. '0 2 * * *'; without it a single RayJob")
    r.add_argument("--timezone", default="UTC", metavar="TZ",
                   help="IANA time zone of --cron (default: UTC)")
    r.add_argument("--image", default=DEFAULT_IMAGE, metavar="IMAGE",
                   help=f"Ironsight container image (default: {DEFAULT_IMAGE})")
    r.add_argument("--namespace", default="ironsight", metavar="NS",
                   help="namespace of every object (default: ironsight)")
    r.add_argument("--name", default=None, metavar="NAME",
                   help="object name (default: the spec's name, lower-cased)")
    r.set_defaults(handler=_render)
