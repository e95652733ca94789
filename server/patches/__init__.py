"""Patch methods as plug-ins. Importing this package registers the built-in methods."""

from server.patches.adapter.method import AdapterMethod
from server.patches.base import MethodConfig, PatchMethod, PatchTable, TrainingDefaults
from server.patches.bitfit.method import BitFitMethod
from server.patches.full.method import FullMethod
from server.patches.registry import get_method, register, registered_methods

register(BitFitMethod())
register(AdapterMethod())
register(FullMethod())

__all__ = [
    "MethodConfig",
    "PatchMethod",
    "PatchTable",
    "TrainingDefaults",
    "get_method",
    "register",
    "registered_methods",
]
