"""``taskpatch-server`` / ``python -m server``."""

from __future__ import annotations

import logging
import os
import sys

from server.errors import TaskPatchError


def main(argv: list[str] | None = None) -> int:
    from server.settings import load_settings

    try:
        settings = load_settings(argv, os.environ)
    except TaskPatchError as exc:
        print(f"taskpatch-server: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Heavy imports after argument parsing: --help stays instant.
    from server.app import serve

    try:
        serve(settings)
    except TaskPatchError as exc:
        logging.getLogger("taskpatch").error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
