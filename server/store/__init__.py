"""Patch store: versioned, atomic, content-hashed safetensors files, one directory per task."""

from server.store.format import (
    FORMAT_VERSION,
    PatchMeta,
    content_hash,
    read_patch_file,
    read_patch_meta,
    write_patch_file,
)
from server.store.store import PatchStore, PatchVersion, TaskRecord

__all__ = [
    "FORMAT_VERSION",
    "PatchMeta",
    "PatchStore",
    "PatchVersion",
    "TaskRecord",
    "content_hash",
    "read_patch_file",
    "read_patch_meta",
    "write_patch_file",
]
