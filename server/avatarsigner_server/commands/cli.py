"""`avatar-signer` command line: `serve` runs the service; `check` audits the credentials
and least privilege against the real bucket; `policies` prints the IAM and bucket documents.

Configuration comes from the environment (docs/operating.md lists every setting). Start-up
problems print one line naming the setting and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from ..app import server, wiring, workers
from ..settings import (
    SettingsError,
    bucket,
    is_valid_bucket,
    is_valid_region,
    limits,
    load,
    uploads,
)
from ..settings.env import Env
from ..settings.uploads import UploadMode
from ..telemetry import logs
from ..telemetry.tracing import Tracing, TracingSettingsError, check_environ, current_trace_id
from . import check, policies

EXIT_CONFIG = 2


def _run(coro_factory: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro_factory)  # type: ignore[arg-type]
    else:
        uvloop.run(coro_factory)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    environ = dict(os.environ)
    if args.workers is not None:
        environ["WORKERS"] = str(args.workers)
    settings = load(environ)
    wiring.check(settings)  # a bad key file stops start-up here, once, not in each worker
    if settings.workers > 1 and not workers.is_worker(environ):
        check_environ(environ)  # OTEL_* checked once here; each worker starts its own tracing
        logs.configure_logging(settings.log_level)
        return workers.supervise(settings, environ)
    tracing = Tracing.from_environ(environ)
    logs.configure_logging(
        settings.log_level, trace_ids=current_trace_id if tracing.enabled else None
    )
    _run(
        server.serve(
            settings, on_serving=workers.worker_ready_notifier(environ), tracing=tracing
        )
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    settings = load(os.environ)
    logs.configure_logging("WARNING")
    results = check.run(settings)
    check.render(settings, results, sys.stdout)
    return 1 if check.failed(results) else 0


# `policies` flags that stand for a setting of the service (a flag given wins).
_POLICY_FLAGS = {
    "UPLOAD_MODE": "mode",
    "S3_KEY_PREFIX": "key_prefix",
    "S3_STAGING_PREFIX": "staging_prefix",
}


def _policy_layout(args: argparse.Namespace) -> policies.Layout:
    """The layout the service's own settings rules give for these flags and environment."""
    given = {var: getattr(args, attr) for var, attr in _POLICY_FLAGS.items()}
    env = Env({**os.environ, **{var: value for var, value in given.items() if value is not None}})
    try:
        mode = uploads.mode(env)
        prefix = bucket.key_prefix(env)
        staging = uploads.uploads(env, mode, prefix).staging_prefix
    except SettingsError as error:
        if given.get(error.name) is None:
            raise
        flag = "--" + _POLICY_FLAGS[error.name].replace("_", "-")
        raise SettingsError(flag, error.problem) from None
    return policies.Layout(
        args.bucket,
        mode,
        prefix,
        staging,
        args.versioned,
        upload_max_ttl=limits.ttl(env, "UPLOAD", *limits.DEFAULT_UPLOAD_TTL).maximum,
        download_max_ttl=limits.ttl(env, "DOWNLOAD", *limits.DEFAULT_DOWNLOAD_TTL).maximum,
    )


def _principals(args: argparse.Namespace, layout: policies.Layout) -> policies.Principals | None:
    """The identities' ARNs for the bucket policy, or None when none is given."""
    given = {
        "--uploader-arn": args.uploader_arn,
        "--reader-arn": args.reader_arn,
        "--verifier-arn": args.verifier_arn,
    }
    for flag, arn in given.items():
        problem = arn and policies.principal_arn_problem(arn)
        if problem:
            raise SettingsError(flag, problem)
    if not any(given.values()):
        return None
    needed = ["--uploader-arn", "--reader-arn"] + (["--verifier-arn"] if layout.verified else [])
    missing = [flag for flag in needed if not given[flag]]
    if missing:
        raise SettingsError(missing[0], f"give {', '.join(needed)} together")
    if not layout.verified and args.verifier_arn:
        raise SettingsError("--verifier-arn", "direct mode has no verifier")
    return policies.Principals(args.uploader_arn, args.reader_arn, args.verifier_arn)


def _policies(args: argparse.Namespace) -> int:
    if not is_valid_bucket(args.bucket):
        raise SettingsError("--bucket", "must be a valid S3 bucket name")
    layout = _policy_layout(args)
    principals = _principals(args, layout)
    arn = args.distribution_arn
    problem = None if arn is None else policies.distribution_arn_problem(arn)
    if problem:
        raise SettingsError("--distribution-arn", problem)
    if args.region is not None and not is_valid_region(args.region):
        raise SettingsError("--region", "must be an AWS region name such as eu-west-1")
    try:
        documents = policies.documents(
            layout, args.allowed_origin, principals, arn, args.region
        )
    except ValueError as error:
        raise SettingsError("--allowed-origin", str(error)) from None
    if principals is None:
        print(
            "avatar-signer policies: without the identities' ARNs (--uploader-arn, "
            "--reader-arn, --verifier-arn) the bucket policy does not deny other principals "
            "the avatars",
            file=sys.stderr,
        )
    print(json.dumps(documents, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-signer",
        description="gRPC service that hands out short-lived S3 presigned URLs for avatars.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the gRPC server (settings from the environment; see docs/operating.md)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="server processes sharing GRPC_PORT under one supervisor (default: WORKERS or 1)",
    )
    serve.set_defaults(func=_serve)
    audit = commands.add_parser(
        "check",
        help="prove the credentials work and the IAM split holds, against the real bucket",
        description=check.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    audit.set_defaults(func=_check)
    documents = commands.add_parser(
        "policies",
        help="print the IAM policies, bucket settings and CloudFront parts as one JSON object",
        description="Print the IAM policies, the bucket settings and (with "
        "--distribution-arn) the CloudFront distribution's parts as one JSON object.",
        epilog=policies.APPLY_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    documents.add_argument("--bucket", required=True, help="the avatar bucket's name")
    documents.add_argument(
        "--mode",
        choices=[m.value for m in UploadMode],
        help="verified (default; three identities) or direct (two); default: UPLOAD_MODE",
    )
    documents.add_argument(
        "--key-prefix", help="prefix of the avatars (default: S3_KEY_PREFIX or profiles/)"
    )
    documents.add_argument(
        "--staging-prefix",
        help="prefix of staged uploads (default: S3_STAGING_PREFIX or uploads/)",
    )
    documents.add_argument(
        "--versioned",
        action="store_true",
        help="the bucket keeps old versions: let the verifier delete them too "
        "(set DELETE_OLD_VERSIONS=true on the service)",
    )
    documents.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="URL",
        help="a browser origin allowed to PUT and GET with presigned URLs (repeatable)",
    )
    for identity, job in (
        ("uploader", "writes to its prefix"),
        ("reader", "reads of the avatars"),
        ("verifier", "reads of staged uploads and writes of avatars (verified mode)"),
    ):
        documents.add_argument(
            f"--{identity}-arn",
            metavar="ARN",
            help=f"the {identity}'s IAM user or role: the bucket policy denies {job} to "
            "anyone else",
        )
    documents.add_argument(
        "--distribution-arn",
        metavar="ARN",
        help="a CloudFront distribution serving the avatars: the bucket policy lets it read "
        "them (Origin Access Control), and its parts are printed under 'cloudfront'",
    )
    documents.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION") or None,
        help="the bucket's region, for the CloudFront origin's domain (default: AWS_REGION)",
    )
    documents.set_defaults(func=_policies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (SettingsError, TracingSettingsError) as error:
        logs.flush_logs()  # the lines logged before it come first
        print(f"avatar-signer: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except server.StartupError as error:
        logs.flush_logs()
        print(f"avatar-signer: cannot start: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
