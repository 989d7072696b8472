"""`avatar-signer` command line: `serve` runs the service.

Configuration comes from the environment (see the README for every setting). Start-up
problems print one line naming the setting and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from . import app, config, observability

EXIT_CONFIG = 2


def _run(coro_factory: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro_factory)  # type: ignore[arg-type]
    else:
        uvloop.run(coro_factory)  # type: ignore[arg-type]


def _serve(args: argparse.Namespace) -> int:
    settings = config.load(os.environ)
    observability.configure_logging(settings.log_level)
    _run(app.serve(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-signer",
        description="gRPC service that hands out short-lived S3 presigned URLs for avatars.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the gRPC server (settings from the environment; see README)"
    )
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except config.SettingsError as error:
        print(f"avatar-signer: configuration error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except app.StartupError as error:
        print(f"avatar-signer: cannot start: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
