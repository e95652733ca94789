"""Server configuration: one object, built once at start-up from flags and ``TASKPATCH_*`` environment variables.

Every option is declared once below (name, default, help). ``python -m server --help`` and the configuration table
in the README are generated from the same declarations; nothing reads the environment anywhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from server.errors import InvalidArgument

ENV_PREFIX = "TASKPATCH_"
MiB = 1024 * 1024


T = TypeVar("T")


def _opt(default: T, help: str) -> T:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _opt("127.0.0.1", "address to bind; use 0.0.0.0 only behind auth/TLS")
    port: int = _opt(50051, "gRPC port (0: pick a free port)")
    metrics_port: int = _opt(9090, "Prometheus /metrics port (0: pick a free port, -1: disabled)")
    metrics_host: str = _opt("127.0.0.1", "address the metrics endpoint binds")
    backbone: str = _opt("default", "default (embedded all-MiniLM-L6-v2), tiny[:seed], a local HF dir or a hub id")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda, cuda:N")
    dtype: str = _opt("fp32", "backbone dtype: fp32, or bf16/fp16 on GPU")
    threads: int = _opt(0, "torch intra-op threads (0: torch's default)")
    store_dir: Path = _opt(Path("var/store"), "patch store directory")
    max_batch_size: int = _opt(32, "most examples in one serving forward pass")
    max_wait_ms: float = _opt(5.0, "longest a request waits for others to share its batch")
    max_resident: int = _opt(1024, "most patches resident in the serving table")
    max_resident_bytes: int = _opt(512 * MiB, "most bytes of resident patch tensors")
    pinned: tuple[str, ...] = _opt((), "comma-separated tasks never evicted from the resident table")
    max_seq_length: int = _opt(128, "serving truncation length in tokens")
    max_inputs_per_request: int = _opt(256, "most inputs in one Predict request")
    max_text_chars: int = _opt(10_000, "longest text or text pair accepted, in characters")
    max_upload_examples: int = _opt(500_000, "most examples in one AddTask upload")
    max_upload_bytes: int = _opt(256 * MiB, "most text bytes in one AddTask upload")
    max_message_bytes: int = _opt(64 * MiB, "largest gRPC message accepted")
    job_queue_size: int = _opt(16, "most training jobs waiting; more get RESOURCE_EXHAUSTED")
    allow_full: bool = _opt(False, "accept full fine-tuning jobs (patch = whole model)")
    train_threads: int = _opt(0, "torch threads the training job uses (0: half the cores, at least 1)")
    train_yield_ms: float = _opt(200.0, "longest a training step waits for queued predictions (0: no priority)")
    auth_token_file: Path | None = _opt(None, "file holding the bearer token for mutating RPCs")
    auth_token: str | None = _opt(None, "bearer token (prefer the file or the env variable)")
    auth_all: bool = _opt(False, "require the token for every RPC, not just mutating ones")
    tls_cert: Path | None = _opt(None, "PEM certificate chain; with --tls-key enables TLS")
    tls_key: Path | None = _opt(None, "PEM private key")
    grace_s: float = _opt(30.0, "on SIGTERM, how long in-flight work may take to finish")
    log_level: str = _opt("INFO", "logging level")

    def validate(self) -> None:
        if not 1 <= self.max_batch_size <= 1024:
            raise InvalidArgument("max_batch_size must be in 1..1024")
        if self.max_wait_ms < 0:
            raise InvalidArgument("max_wait_ms must be >= 0")
        if self.max_resident < 1 or self.max_resident_bytes < 1:
            raise InvalidArgument("max_resident and max_resident_bytes must be positive")
        if len(self.pinned) >= self.max_resident:
            raise InvalidArgument("pin fewer tasks than max_resident")
        if self.job_queue_size < 1:
            raise InvalidArgument("job_queue_size must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key")

    def token(self) -> str | None:
        """The bearer token, read from its file when one is given (never logged)."""
        if self.auth_token_file is not None:
            text = Path(self.auth_token_file).read_text().strip()
            if not text:
                raise InvalidArgument(f"token file {self.auth_token_file} is empty")
            return text
        return self.auth_token or None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _converter(f: dataclasses.Field) -> Callable[[str], Any]:
    annotation = str(f.type)
    if annotation.startswith("bool"):
        return _parse_bool
    if annotation.startswith("int"):
        return int
    if annotation.startswith("float"):
        return float
    if annotation.startswith("Path"):
        return Path
    if annotation.startswith("tuple"):
        return lambda text: tuple(x.strip() for x in text.split(",") if x.strip())
    return str


def option_table() -> list[tuple[str, str, str, str]]:
    """(flag, env variable, default, help) for every option: the configuration reference."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if not isinstance(f.default, tuple) else ",".join(f.default)
        rows.append((f"--{f.name.replace('_', '-')}", ENV_PREFIX + f.name.upper(), str(default), f.metadata["help"]))
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskpatch-server",
        description="Serve and train task patches on one frozen transformer backbone.",
        epilog=f"Every flag can also be set as an environment variable: {ENV_PREFIX}<FLAG_NAME>, e.g. "
        f"{ENV_PREFIX}MAX_BATCH_SIZE=16. Flags win over the environment.",
    )
    for f in dataclasses.fields(Settings):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, type=_converter(f), default=None, help=f.metadata["help"]
        )
    return parser


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Flags, then ``TASKPATCH_*`` variables, then defaults."""
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    for f in dataclasses.fields(Settings):
        flag_value = getattr(args, f.name)
        if flag_value is not None:
            values[f.name] = flag_value
            continue
        env_value = environ.get(ENV_PREFIX + f.name.upper())
        if env_value is not None:
            try:
                values[f.name] = _converter(f)(env_value)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise InvalidArgument(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from exc
    settings = Settings(**values)  # type: ignore[arg-type]
    settings.validate()
    return settings
