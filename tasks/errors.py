"""The one error class of the ``tasks`` package.

``tasks`` is imported by the client as well as the server, so it cannot depend on ``server.errors``. Every problem a
user can cause with their data (missing file, bad row, unknown metric, bad fraction) raises :class:`DataError`; the
server maps it to INVALID_ARGUMENT and the CLI prints the message as is, so messages name the file, row and column.
"""

from __future__ import annotations


class DataError(ValueError):
    """Task data or a task option is unusable; the message says where and why, and is safe to show to the user."""
