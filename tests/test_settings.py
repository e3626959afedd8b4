"""Settings: one place, validated at start, errors that name the setting."""

import typing
from pathlib import Path

import pytest

from orderflow_ingest.settings import (
    SETTINGS,
    Settings,
    SettingsError,
    attribute_name,
    load_settings,
)

REQUIRED = {
    "ORDERFLOW_DATABASE_URL": "postgresql://app@127.0.0.1/db",
    "ORDERFLOW_REDIS_URL": "redis://127.0.0.1:1/0",
    "ORDERFLOW_S3_BUCKET": "orders-raw",
    "ORDERFLOW_INGEST_DOMAINS": "Orderflow.Example.com, b.example",
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ingest.env"
    path.write_text(text)
    return str(path)


def test_file_then_environment(tmp_path: Path) -> None:
    lines = "\n".join(f"{k}={v}" for k, v in REQUIRED.items())
    path = write(tmp_path, "# comment\n" + lines + "\nexport ORDERFLOW_LOCAL_PART='po'\n")
    settings = load_settings(path, environ={"ORDERFLOW_DELIVER_TIMEOUT": "30"})
    assert settings.ingest_domains == ("orderflow.example.com", "b.example")
    assert settings.local_part == "po"
    assert settings.deliver_timeout == 30.0
    assert settings.effective_authserv_id == "orderflow.example.com"
    assert settings.source == path


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_missing_required_setting_is_named(missing: str) -> None:
    environ = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        load_settings("/dev/null", environ=environ)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORDERFLOW_DELIVER_TIMEOUT", "soon"),
        ("ORDERFLOW_METRICS_LISTEN", "0.0.0.0:9464"),  # never off loopback
        ("ORDERFLOW_METRICS_LISTEN", ":9464"),
        ("ORDERFLOW_METRICS_LISTEN", "127.0.0.1"),
        ("ORDERFLOW_DMARC_POLICY", "quarantine-all"),
        ("ORDERFLOW_TEMPFAIL_ON_DNS_ERROR", "maybe"),
    ],
)
def test_a_bad_value_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings("/dev/null", environ={**REQUIRED, name: value})


def test_loopback_listen_addresses_are_accepted() -> None:
    for listen in ("127.0.0.1:9464", "[::1]:9464", "localhost:1"):
        settings = load_settings(
            "/dev/null", environ={**REQUIRED, "ORDERFLOW_METRICS_LISTEN": listen}
        )
        assert settings.metrics_listen == listen


def test_a_typo_in_the_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "ORDERFLOW_DATABSE_URL=x\n")
    with pytest.raises(SettingsError, match="ORDERFLOW_DATABSE_URL"):
        load_settings(path, environ=REQUIRED)


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(str(tmp_path / "absent.env"), environ=REQUIRED)


def test_every_setting_documents_itself() -> None:
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    for setting in SETTINGS:
        assert setting.name.startswith("ORDERFLOW_") and len(setting.doc) > 10


def test_every_setting_is_a_typed_attribute_and_every_attribute_a_setting() -> None:
    # The table is the reference; Settings' annotations are what mypy reads. They must agree
    # row for row, in name and type (the parser's return type), so a misspelt setting is a
    # mypy error rather than an AttributeError at run time.
    declared = typing.get_type_hints(Settings)
    rows = {attribute_name(setting.name): setting for setting in SETTINGS}
    missing = [
        f"    {name}: {typing.get_type_hints(row.parse)['return']}"
        for name, row in rows.items()
        if name not in declared
    ]
    assert not missing, "add to class Settings:\n" + "\n".join(missing)
    assert sorted(set(declared) - set(rows)) == []  # an annotation without a table row
    for name, row in rows.items():
        assert declared[name] == typing.get_type_hints(row.parse)["return"], name


def test_loaded_settings_hold_every_value_as_its_declared_type() -> None:
    settings = load_settings("/dev/null", environ=REQUIRED)
    for name, hint in typing.get_type_hints(Settings).items():
        assert isinstance(getattr(settings, name), typing.get_origin(hint) or hint), name
    assert settings.as_dict()["ORDERFLOW_S3_BUCKET"] == settings.s3_bucket == "orders-raw"
    with pytest.raises(AttributeError):
        settings.s3_buckett  # type: ignore[attr-defined]  # noqa: B018
