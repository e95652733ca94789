"""Patch methods by name. Registering a method is the only step needed to make it trainable and servable."""

from __future__ import annotations

from server.errors import InvalidArgument
from server.patches.base import PatchMethod

_METHODS: dict[str, PatchMethod] = {}


def register(method: PatchMethod) -> PatchMethod:
    if method.name in _METHODS:
        raise ValueError(f"patch method {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> PatchMethod:
    try:
        return _METHODS[name]
    except KeyError:
        raise InvalidArgument(f"unknown patch method {name!r}; registered: {', '.join(sorted(_METHODS))}") from None


def registered_methods() -> dict[str, PatchMethod]:
    return dict(_METHODS)
