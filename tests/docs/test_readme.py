"""The README's reference tables are generated from the code; these tests keep them from rotting."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase

from server.metrics import Metrics
from server.settings import option_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_first_lines_are_the_two_commands() -> None:
    head = README.splitlines()[:6]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_configuration_table_lists_every_option_with_its_default() -> None:
    for flag, env, default, help_text in option_table():
        assert f"| `{flag}` | `{env}` | `{default}` | {help_text} |" in README, flag


def test_metrics_table_lists_every_metric() -> None:
    for metric in vars(Metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            suffix = {"counter": "_total", "info": "_info"}.get(metric._type, "")
            assert f"| `{metric._name}{suffix}` | {metric._type} |" in README, metric._name
