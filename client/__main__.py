"""``python -m client``: the same CLI as the ``client`` / ``taskpatch`` console scripts."""

from __future__ import annotations

from client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
