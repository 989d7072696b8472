"""`avatar-signer-client`: call avatarsigner.v1.AvatarSigner from a shell.

    avatar-signer-client upload-url --user u123 --content-type image/png --content-length 812
    avatar-signer-client download-url --user u123 --ttl 120
    avatar-signer-client batch-download-url --user u1 --user u2
    avatar-signer-client viewer-cookies --ttl 3600
    avatar-signer-client health [--service avatarsigner.v1.AvatarSigner]
    avatar-signer-client upload me.png --user u123
    avatar-signer-client confirm --user u123 --upload-id ID
    avatar-signer-client delete --user u123

Results go to stdout as JSON (health: the status name; upload: the avatar's key and, where
the server verifies uploads, what it verified). Presigned URLs and viewer cookies appear
only there. Every failure is one line on stderr, without a URL or traceback:

    exit 0  success (health: SERVING)
    exit 1  the service or S3 refused, could not be reached, or health is not SERVING
    exit 2  the command cannot run as written: bad arguments, unreadable file, not an image
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata as importlib_metadata
from typing import Any, NoReturn

# gRPC's C core logs some connection failures (TLS handshakes) on stderr by itself, and
# reads this only when grpc is imported. The CLI's errors are one line of its own.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc

from .client import (
    DEFAULT_TIMEOUT,
    AvatarSignerClient,
    AvatarSignerError,
    Confirmation,
    DownloadUrl,
    PlaintextCredentialsError,
    UploadError,
    UploadUrl,
    ViewerCookies,
)
from .contract import AUTHORIZATION_METADATA
from .images import detect_content_type

PROG = "avatar-signer-client"
DEFAULT_TARGET = "127.0.0.1:50051"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Presigned URLs are bearer credentials: no error line may carry one.
_URL = re.compile(r"https?://\S+", re.IGNORECASE)


class UsageError(Exception):
    """The command cannot run as written (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (raised, not printed with the usage block)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix(PROG).strip()
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see '{self.prog} --help')")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _version() -> str:
    try:
        return importlib_metadata.version("avatar-signer-client")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Ask avatar-signer for presigned S3 URLs, and upload avatars with them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--target",
        default=os.environ.get("AVATAR_SIGNER_TARGET") or DEFAULT_TARGET,
        help="host:port of the service (env AVATAR_SIGNER_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="deadline of each call (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("AVATAR_SIGNER_TOKEN") or None,
        help="bearer token sent as 'authorization: Bearer TOKEN' (env AVATAR_SIGNER_TOKEN, "
        "preferred: command lines are visible to other local users)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="use TLS with the system's trusted roots"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="send --token / --end-user-token without TLS to a target that is not this "
        "machine (refused otherwise: anyone on the path could replay them)",
    )
    parser.add_argument(
        "--ca-file",
        metavar="PEM",
        help="use TLS, trusting the CA certificates in this PEM file (implies --tls)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upload_url = commands.add_parser(
        "upload-url", help="a presigned PUT URL for one user's avatar (JSON)"
    )
    upload_url.add_argument("--user", required=True, metavar="ID", help="the user id")
    upload_url.add_argument("--content-type", required=True, metavar="TYPE", help="e.g. image/png")
    upload_url.add_argument(
        "--content-length", required=True, type=int, metavar="BYTES", help="exact size"
    )
    upload_url.add_argument(
        "--sha256", metavar="BASE64", help="SHA-256 of the bytes, base64 (signed into the URL)"
    )
    _add_ttl(upload_url)
    _add_end_user_token(upload_url)
    upload_url.set_defaults(run=_upload_url)

    download_url = commands.add_parser(
        "download-url", help="a presigned GET URL for one user's avatar (JSON)"
    )
    download_url.add_argument("--user", required=True, metavar="ID", help="the user id")
    _add_ttl(download_url)
    download_url.set_defaults(run=_download_url)

    batch = commands.add_parser(
        "batch-download-url", help="presigned GET URLs for many users, in order (JSON list)"
    )
    batch.add_argument(
        "--user",
        dest="users",
        required=True,
        action="append",
        metavar="ID",
        help="a user id; repeat for each user",
    )
    _add_ttl(batch)
    batch.set_defaults(run=_batch_download_url)

    cookies = commands.add_parser(
        "viewer-cookies",
        help="CloudFront signed cookies for every avatar, and the URL template (JSON)",
    )
    cookies.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="how long the cookies grant access (default: the server's)",
    )
    cookies.set_defaults(run=_viewer_cookies)

    health = commands.add_parser("health", help="print the health status; exit 0 only when SERVING")
    health.add_argument(
        "--service", default="", metavar="NAME", help="service name (default: the server)"
    )
    health.set_defaults(run=_health)

    confirm = commands.add_parser(
        "confirm", help="verify a staged upload and publish it as the avatar (JSON)"
    )
    confirm.add_argument("--user", required=True, metavar="ID", help="the user id")
    confirm.add_argument(
        "--upload-id", required=True, metavar="ID", help="upload_id from upload-url"
    )
    confirm.set_defaults(run=_confirm)

    delete = commands.add_parser("delete", help="remove the user's avatar (JSON)")
    delete.add_argument("--user", required=True, metavar="ID", help="the user id")
    _add_end_user_token(delete)
    delete.set_defaults(run=_delete)

    upload = commands.add_parser(
        "upload",
        help="upload an image file as the user's avatar (URL, PUT, confirm); prints JSON",
    )
    upload.add_argument("file", metavar="FILE", help="a JPEG, PNG, WebP or GIF image")
    upload.add_argument("--user", required=True, metavar="ID", help="the user id")
    _add_ttl(upload)
    _add_end_user_token(upload)
    upload.set_defaults(run=_upload)
    return parser


def _add_end_user_token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--end-user-token",
        default=os.environ.get("AVATAR_SIGNER_END_USER_TOKEN") or None,
        metavar="JWT",
        help="the end user's token, for servers that bind uploads and deletions to end users "
        "(env AVATAR_SIGNER_END_USER_TOKEN, preferred)",
    )


def _add_ttl(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="how long the URL stays valid (default: the server's)",
    )


# --- commands: each returns an exit code; errors propagate to main() ----------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _upload_json(upload: UploadUrl) -> dict[str, Any]:
    return {
        "url": upload.url,
        "method": upload.method,
        "headers": upload.headers,
        "expires_at": _iso(upload.expires_at),
        "key": upload.key,
        "upload_id": upload.upload_id,
    }


def _confirmation_json(done: Confirmation) -> dict[str, Any]:
    return {
        "key": done.key,
        "content_type": done.content_type,
        "content_length": done.content_length,
        "width": done.width,
        "height": done.height,
        "checksum_sha256": done.checksum_sha256,
        "metadata_removed": list(done.metadata_removed),
        "icc_profile_kept": done.icc_profile_kept,
        "version": done.version,
    }


def _download_json(download: DownloadUrl) -> dict[str, Any]:
    return {
        "user_id": download.user_id,
        "url": download.url,
        "expires_at": _iso(download.expires_at),
        "key": download.key,
    }


def _upload_url(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    upload = client.create_upload_url(
        args.user,
        args.content_type,
        args.content_length,
        args.sha256,
        args.ttl,
        end_user_token=args.end_user_token,
    )
    _print_json(_upload_json(upload))
    return EXIT_OK


def _download_url(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    _print_json(_download_json(client.create_download_url(args.user, args.ttl)))
    return EXIT_OK


def _batch_download_url(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    downloads = client.batch_create_download_urls(args.users, args.ttl)
    _print_json([_download_json(d) for d in downloads])
    return EXIT_OK


def _cookies_json(cookies: ViewerCookies) -> dict[str, Any]:
    return {
        "cookies": cookies.cookies,
        "set_cookie": list(cookies.set_cookie),
        "resource": cookies.resource,
        "expires_at": _iso(cookies.expires_at),
        "url_template": cookies.url_template,
    }


def _viewer_cookies(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    _print_json(_cookies_json(client.create_viewer_cookies(args.ttl)))
    return EXIT_OK


def _health(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    try:
        status = client.health(args.service)
    except AvatarSignerError as error:
        if error.code is not grpc.StatusCode.NOT_FOUND:
            raise
        message = f"no health status for service {args.service!r}"
        raise AvatarSignerError(error.code, message) from error
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILED


def _confirm(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    _print_json(_confirmation_json(client.confirm_upload(args.user, args.upload_id)))
    return EXIT_OK


def _delete(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    done = client.delete_avatar(args.user, end_user_token=args.end_user_token)
    _print_json(
        {
            "deleted": done.deleted,
            "removed_keys": list(done.removed_keys),
            "cached_copies_expire_within_seconds": int(
                done.cached_copies_expire_within.total_seconds()
            ),
            "old_versions_remain": done.old_versions_remain,
        }
    )
    return EXIT_OK


def _upload(client: AvatarSignerClient, args: argparse.Namespace) -> int:
    data = _read(args.file)
    if detect_content_type(data) is None:
        raise UsageError(
            f"{args.file}: not a JPEG, PNG, WebP or GIF image (judged by its first bytes)"
        )
    result = client.upload(
        args.user,
        data,
        ttl=args.ttl,
        end_user_token=args.end_user_token,
        put_timeout=max(30.0, args.timeout),
    )
    done = result.confirmation
    _print_json({"key": result.key} if done is None else _confirmation_json(done))
    return EXIT_OK


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or type(error).__name__}") from None


def _channel_credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if args.ca_file is not None:
        roots = _read(args.ca_file)
        return grpc.ssl_channel_credentials(root_certificates=roots)
    if args.tls:
        return grpc.ssl_channel_credentials()
    return None


def _describe(error: AvatarSignerError, args: argparse.Namespace) -> str:
    if error.code is grpc.StatusCode.UNAVAILABLE:
        if "handshake" in error.message.lower():
            return f"cannot reach {args.target} (UNAVAILABLE: TLS handshake failed)"
        return f"cannot reach {args.target} (UNAVAILABLE)"
    if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from {args.target} within {args.timeout:g}s (DEADLINE_EXCEEDED)"
    if error.reason:
        return f"{error} ({error.reason})"
    return str(error)


def _fail(message: str) -> None:
    """One line on stderr; anything URL-shaped is redacted, whatever produced it."""
    line = _URL.sub("<url>", " ".join(message.split()))
    print(f"{PROG}: {line}", file=sys.stderr)


def _silence_stdout() -> None:
    # Python would otherwise complain when it flushes stdout again at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        _fail(str(error))
        return EXIT_USAGE
    except SystemExit as done:  # --help and --version
        return done.code if isinstance(done.code, int) else EXIT_OK
    try:
        credentials = _channel_credentials(args)
        metadata = [(AUTHORIZATION_METADATA, f"Bearer {args.token}")] if args.token else None
        with AvatarSignerClient(
            args.target,
            timeout=args.timeout,
            channel_credentials=credentials,
            metadata=metadata,
            allow_plaintext_credentials=args.insecure,
        ) as client:
            code: int = args.run(client, args)
            return code
    except UsageError as error:
        _fail(str(error))
        return EXIT_USAGE
    except PlaintextCredentialsError as error:
        _fail(f"{error} (--tls, --ca-file or --insecure)")
        return EXIT_USAGE
    except AvatarSignerError as error:
        _fail(_describe(error, args))
        return EXIT_FAILED
    except UploadError as error:
        _fail(str(error))
        return EXIT_FAILED
    except ValueError as error:  # a value the client or protobuf refused (nan, > int64)
        _fail(f"invalid argument: {error}")
        return EXIT_USAGE
    except BrokenPipeError:  # stdout's reader went away (`| head`): nothing to report
        _silence_stdout()
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 - the promise is one line, never a traceback
        _fail(f"unexpected {type(error).__name__}: {error}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
