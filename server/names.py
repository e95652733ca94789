"""The one task-name rule used everywhere (RPC, store, CLI).

Store paths are built only from names that pass :func:`validate_task_name`, so a name can never escape the store
directory (``../x``, ``/etc/passwd``, NUL bytes and unicode look-alikes all fail the pattern).
"""

from __future__ import annotations

import re

from server.errors import InvalidArgument

TASK_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_task_name(name: object) -> str:
    """Return ``name`` unchanged if it is a valid task name, else raise :class:`InvalidArgument`."""
    if not isinstance(name, str) or TASK_NAME_PATTERN.fullmatch(name) is None:
        shown = repr(name)[:80]
        raise InvalidArgument(
            f"invalid task name {shown}: use 1-63 characters from a-z, 0-9, '_' and '-',"
            " starting with a letter or digit"
        )
    return name
