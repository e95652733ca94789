"""Crash-safe file replacement, shared by patch files and the CURRENT pointer.

The store's promise is that a crash at any instant leaves either the old state or the new one. Both kinds of file
it writes go through :func:`atomic_write_bytes`, so the promise rests on one short function.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

#: Prefix of every temporary name the store creates. Readers ignore dot-names; the store removes leftovers at open.
TMP_PREFIX = ".tmp-"


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry change (create, rename, unlink) to disk.

    ``os.replace`` is atomic but not durable until the directory itself is synced; without this a power cut can
    bring back the old name after the caller was told the write succeeded.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Make ``path`` hold exactly ``data``, or leave it untouched if anything fails.

    The data goes to a ``.tmp-*`` file in the same directory (``os.replace`` is only atomic within one file
    system), is flushed and fsynced, then renamed over ``path``; finally the directory is fsynced. On any failure
    the temporary file is removed, so no half-written file is ever visible under a name a reader looks at.
    """
    directory = path.parent
    tmp = directory / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(6)}"
    # O_EXCL: never clobber a file we did not create; 0o644 (minus umask) rather than mkstemp's 0o600, so other
    # tools run by the operator can read the patches.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(directory)
