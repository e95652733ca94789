from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import InvalidArgument
from server.settings import Settings, load_settings, option_table


def test_defaults() -> None:
    settings = load_settings([], {})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"  # never all interfaces unless told


def test_flags_beat_environment_beat_defaults() -> None:
    env = {"TASKPATCH_MAX_BATCH_SIZE": "8", "TASKPATCH_PORT": "7000", "TASKPATCH_ALLOW_FULL": "yes"}
    settings = load_settings(["--port", "7001", "--pinned", "a,b", "--store-dir", "/tmp/x"], env)
    assert settings.port == 7001
    assert settings.max_batch_size == 8
    assert settings.allow_full is True
    assert settings.pinned == ("a", "b")
    assert settings.store_dir == Path("/tmp/x")


def test_bad_environment_value_is_a_clear_error() -> None:
    with pytest.raises(InvalidArgument, match="TASKPATCH_PORT"):
        load_settings([], {"TASKPATCH_PORT": "eighty"})


def test_validation() -> None:
    with pytest.raises(InvalidArgument):
        load_settings(["--max-batch-size", "0"], {})
    with pytest.raises(InvalidArgument):
        load_settings(["--tls-cert", "c.pem"], {})


def test_token_from_file_is_stripped(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    assert load_settings(["--auth-token-file", str(token_file)], {}).token() == "s3cret"


def test_option_table_covers_every_option() -> None:
    rows = option_table()
    assert len(rows) == len(Settings.__dataclass_fields__)
    assert all(env.startswith("TASKPATCH_") and help_text for _, env, _, help_text in rows)
