"""Serving engine: cross-task micro-batching over a resident patch table."""

from server.engine.engine import EngineSettings, PredictOutput, ServingEngine

__all__ = ["EngineSettings", "PredictOutput", "ServingEngine"]
