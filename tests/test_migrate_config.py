"""The schema owner's URL stays out of the settings file every service reads (item 11).

Only `db migrate` reads it: from its own root-only file (--migrate-config, default
/etc/orderflow/migrate.env) or from its own environment.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from orderflow_ingest.settings import (
    MIGRATE_URL_SETTING,
    SettingsError,
    load_migrate_settings,
    load_settings,
)

RUNTIME = "postgresql://app:secret@127.0.0.1:5432/orderflow"
OWNER = "postgresql://owner:secret@127.0.0.1:5432/orderflow"


def _env_file(path: Path, **extra: str) -> str:
    lines = [
        f"ORDERFLOW_DATABASE_URL={RUNTIME}",
        "ORDERFLOW_REDIS_URL=redis://127.0.0.1:6379/0",
        "ORDERFLOW_S3_BUCKET=b",
        "ORDERFLOW_INGEST_DOMAINS=orderflow.test",
    ]
    lines += [f"{key}={value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_item11_services_refuse_the_owner_url_in_their_settings_file(tmp_path: Path) -> None:
    config = _env_file(tmp_path / "ingest.env", **{MIGRATE_URL_SETTING: OWNER})
    with pytest.raises(SettingsError) as caught:
        load_settings(config, environ={})
    assert MIGRATE_URL_SETTING in str(caught.value)
    assert "migrate.env" in str(caught.value)
    assert "secret" not in str(caught.value)  # the message never echoes the URL


def test_item11_services_ignore_the_owner_url_in_their_environment(tmp_path: Path) -> None:
    config = _env_file(tmp_path / "ingest.env")
    settings = load_settings(config, environ={MIGRATE_URL_SETTING: OWNER})
    assert settings.migrate_url == RUNTIME
    assert OWNER not in repr(settings.as_dict())


def test_item11_migrate_reads_the_owner_url_from_its_own_file(tmp_path: Path) -> None:
    config = _env_file(tmp_path / "ingest.env")
    owner_file = tmp_path / "migrate.env"
    owner_file.write_text(f"# owner\n{MIGRATE_URL_SETTING}={OWNER}\n")
    assert load_migrate_settings(config, str(owner_file), environ={}).migrate_url == OWNER
    # The environment of `db migrate` itself wins, as for every setting.
    other = OWNER.replace("owner", "deployer")
    settings = load_migrate_settings(config, str(owner_file), environ={MIGRATE_URL_SETTING: other})
    assert settings.migrate_url == other
    assert settings.database_url == RUNTIME


def test_item11_migrate_file_holds_only_the_owner_url(tmp_path: Path) -> None:
    config = _env_file(tmp_path / "ingest.env")
    owner_file = tmp_path / "migrate.env"
    owner_file.write_text(f"{MIGRATE_URL_SETTING}={OWNER}\nORDERFLOW_REDIS_URL=redis://x\n")
    with pytest.raises(SettingsError, match="may hold only"):
        load_migrate_settings(config, str(owner_file), environ={})
    with pytest.raises(SettingsError, match="cannot read migrate config file"):
        load_migrate_settings(config, str(tmp_path / "missing.env"), environ={})


@pytest.mark.stack
def test_item11_devstack_keeps_the_owner_url_in_a_root_only_file(stack: Any) -> None:
    services_file = stack.config_path.read_text()
    assert MIGRATE_URL_SETTING not in services_file
    owner_file = stack.migrate_config_path
    mode = owner_file.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0 and mode.st_gid == 0
    assert f"{MIGRATE_URL_SETTING}={stack.settings.migrate_url}" in owner_file.read_text()
    assert stack.settings.migrate_url != stack.settings.database_url
    # What every service loads has no owner URL at all.
    runtime = load_settings(str(stack.config_path), environ={})
    assert runtime.migrate_url == runtime.database_url


@pytest.mark.stack
def test_item11_db_migrate_cli_takes_the_owner_url_from_migrate_config(stack: Any) -> None:
    from ops_support import cli

    result = cli(stack, "db", "migrate", "--migrate-config", str(stack.migrate_config_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "schema is up to date" in result.stdout
    missing = cli(stack, "db", "migrate", "--migrate-config", "/nonexistent/migrate.env")
    assert missing.returncode == 78, missing.stdout + missing.stderr
    assert "cannot read migrate config file" in missing.stderr
    assert os.environ.get(MIGRATE_URL_SETTING) is None
