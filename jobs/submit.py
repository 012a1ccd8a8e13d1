"""Submitting job specs to a Ray cluster through the Ray Jobs API: ``submit``, ``status``, ``logs``, ``stop``.

```
ironsight submit SPEC.yaml --address http://HEAD:8265 [--wait] [--follow] [--submission-id ID]
ironsight status ID --address http://HEAD:8265
ironsight logs ID --address http://HEAD:8265 [--follow]
ironsight stop ID --address http://HEAD:8265
```

``--address`` defaults to ``IRONSIGHT_JOBS_ADDRESS``, then ``RAY_ADDRESS``.

**How the spec travels.** The spec is validated here first (an invalid spec exits 2 and nothing
is submitted), then shipped as the job's ``runtime_env`` ``working_dir``: a fresh directory that
holds only ``ironsight-spec.yaml``. Ray zips it, uploads it to the head's package store (content
addressed, so resubmitting the same spec uploads nothing), and runs the entrypoint
``ironsight run ironsight-spec.yaml`` in the unpacked copy. A working dir rather than an
environment variable or an entrypoint argument because the file reaches the cluster byte for
byte (no shell quoting, no size limit of an env var) and the entrypoint stays readable in
``ray job list``. Consequences:

- a spec without ``address`` is shipped with ``address: auto``, so the job joins the cluster it
  runs on instead of starting an embedded Ray inside the job's driver;
- paths in the spec are read *on the cluster*: relative local paths are refused here (they
  would resolve inside the unpacked working dir); use absolute paths the cluster can read or
  ``s3://`` URIs;
- the non-secret object-store settings of this shell (``AWS_ENDPOINT_URL``, region, ...) are
  passed as ``env_vars``; credentials never are (the dashboard shows a runtime env). The job's
  driver, joining the cluster, does not pass them to ``ray.init`` again (Ray refuses a driver
  runtime env that repeats a variable of the job's: :func:`ironsight.cluster.raycluster.forwarded_env`).

**Token authentication** and the Jobs API's errors (401/403 exit 2, an unreachable head exits
1) are :mod:`ironsight.jobs.rayjobs`, the client these commands use.

**Exactly one run per schedule slot.** :func:`scheduled_submission_id` derives a stable
``submission_id`` from the job name, spec hash and scheduled time. Submitting an id that already
exists on the cluster submits nothing and reports the existing job (exit 0), so a retried
submit cannot run a job twice. Without ``--submission-id`` every submit gets a fresh id.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ironsight.cluster.errors import (
    EXIT_FAILED,
    EXIT_GATE_FAILED,
    EXIT_INVALID,
    EXIT_MEANINGS,
    EXIT_OK,
    EXIT_REGRESSED,
    InvalidInput,
    JobFailed,
)
from ironsight.cluster.raycluster import object_store_env  # non-secret object-store settings
from ironsight.jobs.rayjobs import (
    LOG_TAIL_LINES,
    client_address,
    existing_status,
    follow,
    job_client,
    log_tail,
    plain_errors,
)
from ironsight.jobs.spec import AuditJob, ClassifyJob
from ironsight.jobs.spec_file import load_spec, relative_paths_as_written

if TYPE_CHECKING:  # ray is imported lazily: importing the CLI must not pay for it
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "SPEC_FILENAME",
    "SubmitResult",
    "add_commands",
    "exit_code_of",
    "scheduled_submission_id",
    "submit_spec",
    "validated_spec_hash",
]

# The only file in the shipped working dir; the entrypoint runs it.
SPEC_FILENAME = "ironsight-spec.yaml"


@dataclass(frozen=True)
class SubmitResult:
    """What :func:`submit_spec` did.

    Attributes:
        submission_id: the job's id on the cluster.
        submitted: False when a job with this id already existed and nothing was submitted.
        status: the job's status right after the call (``PENDING`` for a fresh submit).
    """

    submission_id: str
    submitted: bool
    status: str


# --- ids and hashes ---------------------------------------------------------------------------


def validated_spec_hash(spec: ClassifyJob | AuditJob) -> str:
    """The submission identity: a hash of every field of a validated spec, defaults and tuning
    included (16 hex digits, :func:`ironsight.cluster.output_format.stable_hash`).

    Names scheduled runs (:func:`scheduled_submission_id`), is the job's
    ``ironsight_spec_hash`` metadata and the history's ``spec_hash`` column. Not the OUTPUT's
    owner identity (``ironsight.cluster.pipeline.output_rows_hash``, only what decides the rows).

    >>> a = AuditJob(input="/e", output="/o", model="demo_cnn", random_weights=True)
    >>> b = AuditJob(output="/o", input="/e", random_weights=True, model="demo_cnn", seed=0)
    >>> validated_spec_hash(a) == validated_spec_hash(b), len(validated_spec_hash(a))
    (True, 16)
    >>> validated_spec_hash(a) == validated_spec_hash(a.model_copy(update={"seed": 1}))
    False
    """
    from ironsight.cluster.output_format import stable_hash

    return stable_hash(spec.model_dump(mode="json"))


def scheduled_submission_id(job_name: str, spec_hash: str, scheduled_for: datetime) -> str:
    """The submission id of one scheduled run: the same inputs always give the same id.

    Args:
        job_name: the spec's ``name``; lowercased, anything but ``[a-z0-9-]`` becomes ``-``,
            cut to 40 characters.
        spec_hash: :func:`validated_spec_hash` (or any hex digest); its first 12 characters are used,
            so a changed spec is a different run.
        scheduled_for: the slot's time; a naive datetime is taken as UTC. Seconds are kept,
            microseconds dropped.

    Raises:
        ValueError: empty name or hash.

    >>> from datetime import datetime, timezone, timedelta
    >>> scheduled_submission_id("Nightly audit", "0123456789abcdef", datetime(2026, 11, 23, 2, 0))
    'ironsight-nightly-audit-0123456789ab-20261123T020000Z'
    >>> cet = timezone(timedelta(hours=1))
    >>> scheduled_submission_id("nightly-audit", "0123456789abcdef",
    ...                         datetime(2026, 11, 23, 3, 0, tzinfo=cet))
    'ironsight-nightly-audit-0123456789ab-20261123T020000Z'
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")[:40].strip("-")
    digest = re.sub(r"[^0-9a-zA-Z]", "", spec_hash)[:12].lower()
    if not slug or not digest:
        raise ValueError(
            f"scheduled_submission_id needs a job name and a spec hash with letters or digits, "
            f"got {job_name!r} and {spec_hash!r}"
        )
    when = scheduled_for if scheduled_for.tzinfo else scheduled_for.replace(tzinfo=timezone.utc)
    stamp = when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"ironsight-{slug}-{digest}-{stamp}"


def _fresh_submission_id(job_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")[:40].strip("-") or "job"
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"ironsight-{slug}-{stamp}-{uuid.uuid4().hex[:6]}"


# --- submit -----------------------------------------------------------------------------------


_PATH_FIELDS = ("input", "output", "weights", "model_card", "baseline", "gate", "suite")


def _check_cluster_paths(spec: ClassifyJob | AuditJob, source: str) -> None:
    written = relative_paths_as_written(spec)  # load_spec resolved them against the spec's folder
    for name in _PATH_FIELDS:
        value = written.get(name) or getattr(spec, name, None)
        if not value or "://" in value or os.path.isabs(value):
            continue
        if name == "suite" and not value.endswith((".yaml", ".yml")):
            continue  # a built-in suite name, not a file
        raise InvalidInput(
            f"{source}: {name}: {value!r} is a relative path, which the cluster would read "
            "inside the job's working dir; use an absolute path the cluster can read or an "
            "s3:// URI"
        )


def _shipped_spec(path: str) -> str:
    from ironsight.cluster.yamlfile import load_yaml  # the bounded loader load_spec used

    data = load_yaml(path, what="spec file")
    if not data.get("address"):
        data["address"] = "auto"  # join the cluster the job runs on
    return yaml.safe_dump(data, sort_keys=False)


def submit_spec(
    spec_path: str,
    *,
    address: str | None = None,
    submission_id: str | None = None,
    client: JobSubmissionClient | None = None,
    entrypoint_num_cpus: float | None = None,
) -> SubmitResult:
    """Validate a spec here, then submit ``ironsight run`` of it to the cluster, at most once.

    Args:
        spec_path: the YAML job spec.
        address: the Jobs API (``http://HEAD:8265``); ignored when ``client`` is given.
        submission_id: the job's id; when a job with this id exists, nothing is submitted and
            its status is returned. Default: a fresh id.
        client: a client from :func:`ironsight.jobs.rayjobs.job_client` to reuse.
        entrypoint_num_cpus: CPUs reserved for the job's driver (default: Ray's, none).

    Raises:
        InvalidInput: the spec is invalid or names relative paths (nothing was submitted).
        AuthRefused, ClusterUnreachable: see :func:`ironsight.jobs.rayjobs.job_client`.
    """
    spec = load_spec(spec_path)
    _check_cluster_paths(spec, spec_path)
    client = client or job_client(address)
    url = client_address(client)
    if submission_id is not None:
        status = existing_status(client, submission_id)
        if status is not None:
            return SubmitResult(submission_id, submitted=False, status=status)
    sid = submission_id or _fresh_submission_id(spec.name)
    env = object_store_env()
    with tempfile.TemporaryDirectory(prefix="ironsight-submit-") as workdir:
        Path(workdir, SPEC_FILENAME).write_text(_shipped_spec(spec_path))
        runtime_env: dict[str, Any] = {"working_dir": workdir}
        if env:
            runtime_env["env_vars"] = env
        try:
            with plain_errors(url):
                client.submit_job(
                    entrypoint=f"ironsight run {SPEC_FILENAME} --no-progress",
                    submission_id=sid,
                    runtime_env=runtime_env,
                    metadata={
                        "ironsight_job": spec.name,
                        "ironsight_kind": spec.kind,
                        "ironsight_spec_hash": validated_spec_hash(spec),
                    },
                    entrypoint_num_cpus=entrypoint_num_cpus,
                )
        except JobFailed as exc:
            # Two submits of one id raced: the loser sees the winner's job.
            status = existing_status(client, sid) if "already exists" in str(exc) else None
            if status is None:
                raise
            return SubmitResult(sid, submitted=False, status=status)
    return SubmitResult(sid, submitted=True, status="PENDING")



def _finish(client: JobSubmissionClient, submission_id: str, status: str) -> int:
    if status == "SUCCEEDED":
        return 0
    with plain_errors(client_address(client), submission_id):
        info = client.get_job_info(submission_id)
    print(f"{submission_id}: {status}: {info.message or ''}".rstrip(": "), file=sys.stderr)
    tail = log_tail(client, submission_id)
    if tail:
        print(f"--- last {LOG_TAIL_LINES} log lines of {submission_id} ---", file=sys.stderr)
        print(tail, file=sys.stderr)
    return exit_code_of(status, getattr(info, "driver_exit_code", None))


# `ironsight run` exit codes that mean something to whoever waits on the job: the input or
# spec was invalid on the cluster (2), the release gate failed (3), the run regressed (4).
PASSED_THROUGH_EXIT_CODES = (EXIT_INVALID, EXIT_GATE_FAILED, EXIT_REGRESSED)


def exit_code_of(status: str, driver_exit_code: int | None) -> int:
    """Exit code of `submit --wait` for a job that ended in ``status``.

    A FAILED job whose driver (`ironsight run` on the cluster) exited with one of
    :data:`PASSED_THROUGH_EXIT_CODES` exits with that code, so a scheduler sees a regression
    (4) or a failed gate (3) as such; any other failure, and a stopped job, is 1.

    >>> exit_code_of("SUCCEEDED", 0), exit_code_of("FAILED", 4), exit_code_of("FAILED", 137)
    (0, 4, 1)
    >>> exit_code_of("STOPPED", None)
    1
    """
    if status == "SUCCEEDED":
        return EXIT_OK
    if status == "FAILED" and driver_exit_code in PASSED_THROUGH_EXIT_CODES:
        return int(driver_exit_code)
    return EXIT_FAILED


# --- the CLI ----------------------------------------------------------------------------------

_ADDRESS_HELP = "Ray Jobs API, the head's dashboard port (default: $IRONSIGHT_JOBS_ADDRESS, $RAY_ADDRESS)"

EPILOG_SUBMIT = textwrap.dedent(
    """\
    examples:
      RAY_AUTH_TOKEN=... ironsight submit nightly.yaml --address http://head:8265 --wait
      ironsight submit audit.yaml --submission-id audit-2026-11-23 --wait --follow
      ironsight status audit-2026-11-23 --address http://head:8265

    The spec is validated here (exit 2, nothing submitted, when invalid) and shipped as the
    job's working dir; the cluster runs `ironsight run` on it, joining the cluster (address:
    auto) unless the spec names an address. Paths in the spec are read on the cluster: use
    absolute paths or s3:// URIs. An existing --submission-id is not submitted again (exit 0).

    Token auth: the token comes from RAY_AUTH_TOKEN, the file in RAY_AUTH_TOKEN_PATH, or
    ~/.ray/auth_token when RAY_AUTH_MODE=token; it is never printed.
    exit codes: 0 submitted (or succeeded with --wait), 1 failed/stopped or unreachable,
    2 invalid spec or refused (token missing or wrong); with --wait, a job whose run on the
    cluster exited 2 (its input or spec was invalid there), 3 (release gate failed) or 4
    (regressed against the previous night) exits with that code.
    """
)


def _cmd_submit(args: argparse.Namespace) -> int:
    # Validate before connecting: an invalid spec exits 2 even with no cluster around.
    _check_cluster_paths(load_spec(args.spec), args.spec)
    client = job_client(args.address)
    result = submit_spec(args.spec, submission_id=args.submission_id, client=client)
    url = client_address(client)
    if result.submitted:
        print(f"submitted {result.submission_id} to {url}")
    else:
        print(f"{result.submission_id} already exists on {url} ({result.status}); not submitted again")
    if not (args.wait or args.follow):
        if result.submitted:
            print(f"follow it: ironsight logs {result.submission_id} --address {url} --follow")
        return 0
    status = follow(client, result.submission_id, logs=args.follow)
    return _finish(client, result.submission_id, status)


def _cmd_status(args: argparse.Namespace) -> int:
    client = job_client(args.address)
    with plain_errors(client_address(client), args.id):
        info = client.get_job_info(args.id)
    print(f"{args.id}: {info.status.value}")
    if info.message:
        print(f"  message: {info.message}")
    print(f"  entrypoint: {info.entrypoint}")
    code = getattr(info, "driver_exit_code", None)
    if code is not None:
        print(f"  exit code: {code}" + (f" ({EXIT_MEANINGS[code]})" if code in EXIT_MEANINGS else ""))
    for label, ms in (("started", info.start_time), ("ended", info.end_time)):
        if ms:
            print(f"  {label}: {datetime.fromtimestamp(ms / 1000, timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    client = job_client(args.address)
    if args.follow:
        follow(client, args.id, logs=True, on_status=lambda status: None)
        return 0
    with plain_errors(client_address(client), args.id):
        sys.stdout.write(client.get_job_logs(args.id))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    client = job_client(args.address)
    with plain_errors(client_address(client), args.id):
        stopped = client.stop_job(args.id)
        status = client.get_job_status(args.id).value
    if stopped:
        print(f"{args.id}: stop requested ({status})")
    else:
        print(f"{args.id}: not running ({status}); nothing to stop")
    return 0


def add_commands(subparsers: argparse._SubParsersAction, formatter: Callable) -> None:
    """Add ``submit``, ``status``, ``logs`` and ``stop`` to the ``ironsight`` CLI."""
    p = subparsers.add_parser(
        "submit",
        help="submit a job spec to a Ray cluster (Jobs API, token auth)",
        description="Validate SPEC.yaml here and submit `ironsight run` of it to a Ray cluster "
        "through the Ray Jobs API.",
        epilog=EPILOG_SUBMIT,
        formatter_class=formatter,
    )
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("--address", metavar="http://HEAD:8265", help=_ADDRESS_HELP)
    p.add_argument("--submission-id", metavar="ID",
                   help="the job's id; an id that already exists is not submitted again "
                   "(default: a fresh id)")
    p.add_argument("--wait", action="store_true",
                   help="follow the job to the end; exit 0 on SUCCEEDED, 1 on FAILED/STOPPED, "
                   "2/3/4 when the run on the cluster found its input invalid / failed its release gate / "
                   "regressed")
    p.add_argument("--follow", action="store_true", help="stream the job's log while waiting (implies --wait)")
    p.set_defaults(handler=_cmd_submit)

    for name, help_text, handler in (
        ("status", "a submitted job's status, message and times", _cmd_status),
        ("logs", "a submitted job's driver log", _cmd_logs),
        ("stop", "stop a submitted job", _cmd_stop),
    ):
        p = subparsers.add_parser(
            name,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}, from the Ray Jobs API.",
            epilog=f"example:\n  ironsight {name} ironsight-nightly-audit-... --address http://head:8265",
            formatter_class=formatter,
        )
        p.add_argument("id", metavar="ID", help="the submission id `ironsight submit` printed")
        p.add_argument("--address", metavar="http://HEAD:8265", help=_ADDRESS_HELP)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        p.set_defaults(handler=handler)
