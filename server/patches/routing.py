"""The routing context: which patch each row of the current forward pass uses.

Hooks installed on the frozen backbone read this context instead of any module state, so the same backbone can run
a training step in one thread and a mixed-task serving batch in another at the same time. ``contextvars`` gives every
thread its own value.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Protocol

import torch


class PointApplier(Protocol):
    """Applies one method's patch(es) at a patch point, for the rows of the current batch."""

    def apply(self, point: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor: ...


_NO_PATCHES: Mapping[str, PointApplier] = MappingProxyType({})
_ROUTING: contextvars.ContextVar[Mapping[str, PointApplier]] = contextvars.ContextVar(
    "taskpatch_routing", default=_NO_PATCHES
)


def current_appliers() -> Mapping[str, PointApplier]:
    """Method name -> applier for the forward pass running in this thread (empty: bare backbone)."""
    return _ROUTING.get()


@contextmanager
def routed(appliers: Mapping[str, PointApplier]) -> Iterator[None]:
    """Run the enclosed forward pass with ``appliers`` as its patches."""
    token = _ROUTING.set(appliers)
    try:
        yield
    finally:
        _ROUTING.reset(token)
