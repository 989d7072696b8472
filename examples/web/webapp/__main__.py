"""`python -m webapp` (from examples/web): serve the profile service until Ctrl-C."""

from __future__ import annotations

import sys

from .serving import serve
from .settings import SettingsError, load


def main() -> int:
    try:
        settings = load()
    except SettingsError as error:
        print(f"profile web app: configuration error: {error}", file=sys.stderr)
        return 2
    print(f"profile web app on http://{settings.host}:{settings.port}/", flush=True)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
