"""Settings: defaults, normalisation, and a message naming each bad variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ccm.config import SettingsError, load_settings


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.embedded
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'var' / 'ccm.db'}"
    assert str(settings.public_base_url) == "http://127.0.0.1:8000/"
    assert settings.admin_api_key is None
    assert not settings.twilio_configured


def test_environment_is_read_with_the_ccm_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCM_DATABASE_URL", "postgresql://ccm:s3cr%40t@db.internal:5432/ccm")
    monkeypatch.setenv("CCM_BROKER_URL", "redis://localhost:6379/0")
    monkeypatch.setenv("CCM_SMTP_PORT", "587")
    monkeypatch.setenv("CCM_TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    monkeypatch.setenv("CCM_TWILIO_AUTH_TOKEN", "tw-secret-value")
    monkeypatch.setenv("CCM_TWILIO_FROM_NUMBER", "+44 7911 123456")
    settings = load_settings()
    assert settings.resolved_database_url == "postgresql+psycopg://ccm:s3cr%40t@db.internal:5432/ccm"
    assert not settings.embedded
    assert settings.smtp_port == 587
    assert settings.twilio_configured
    assert settings.twilio_from_number == "+447911123456"
    for secret in ("tw-secret-value", "s3cr"):
        assert secret not in repr(settings)
        assert secret not in str(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CCM_SMTP_PORT", "70000", "less than or equal to 65535"),
        ("CCM_SMTP_PORT", "smtp", "valid integer"),
        ("CCM_DATABASE_URL", "mysql://x/y", "unsupported database 'mysql'"),
        ("CCM_DATABASE_URL", "not a url", "not a database URL"),
        ("CCM_BROKER_URL", "http://localhost", "redis://"),
        ("CCM_PUBLIC_BASE_URL", "not-a-url", "URL"),
        ("CCM_ADMIN_API_KEY", "short", "too short"),
        ("CCM_SMTP_SECURITY", "tls", "'none', 'starttls' or 'ssl'"),
        ("CCM_TWILIO_ACCOUNT_SID", "XX123", "starts with AC"),
        ("CCM_TWILIO_FROM_NUMBER", "12345", "E.164"),
        ("CCM_LOG_LEVEL", "LOUD", "DEBUG, INFO"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"{variable}: ")
    assert message in str(raised.value)


def test_half_configured_twilio_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCM_TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    with pytest.raises(SettingsError, match="CCM_TWILIO_AUTH_TOKEN is missing"):
        load_settings()
    monkeypatch.setenv("CCM_TWILIO_AUTH_TOKEN", "token")
    with pytest.raises(SettingsError, match="CCM_TWILIO_FROM_NUMBER or CCM_TWILIO_MESSAGING_SERVICE_SID"):
        load_settings()


def test_the_command_line_stops_with_the_setting_named(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ccm", "db", "upgrade"],
        env={"CCM_SMTP_PORT": "0", "CCM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "CCM_SMTP_PORT: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr
