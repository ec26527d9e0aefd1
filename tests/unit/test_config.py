"""Settings fail at start-up with a message that names the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.cli import main
from controlplane.config import SettingsError, load_settings


def test_defaults_serve_sqlite_on_loopback() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///./controlplane.db"
    assert settings.is_sqlite
    assert settings.listen_host == "127.0.0.1"
    assert settings.incident_group_by == ["alertname", "namespace"]


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_DATABSE_URL", "sqlite:///typo.db")
    with pytest.raises(SettingsError, match="CONTROLPLANE_DATABSE_URL"):
        load_settings()


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_LISTEN_PORT", "eighty")
    with pytest.raises(SettingsError, match="CONTROLPLANE_LISTEN_PORT"):
        load_settings()


@pytest.mark.parametrize(
    "url", ["controlplane.example.com", "ftp://controlplane.example", "https://", "https://cp.example/?a=1"]
)
def test_a_public_url_links_cannot_be_built_on_is_refused(url: str) -> None:
    # Links to incidents and runbooks are built on it; a bad one would only show when on-call clicks.
    with pytest.raises(SettingsError, match=r"CONTROLPLANE_PUBLIC_URL: .*is not an http\(s\) URL"):
        load_settings(public_url=url)


def test_the_public_url_loses_its_trailing_slash() -> None:
    assert (
        load_settings(public_url="https://ops.example/controlplane/").public_url == "https://ops.example/controlplane"
    )
    assert load_settings(public_url="").public_url is None


def test_group_by_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTROLPLANE_INCIDENT_GROUP_BY", "alertname, cluster")
    assert load_settings().incident_group_by == ["alertname", "cluster"]


STRONG = "7d3f9a1c5e0b8d2f4a6c1e9b3d7f5a0c"


def test_production_refuses_missing_or_placeholder_token() -> None:
    with pytest.raises(SettingsError, match="required in production"):
        load_settings(environment="production")
    with pytest.raises(SettingsError, match="placeholder"):
        load_settings(environment="production", webhook_token="changeme")
    assert load_settings(environment="production", webhook_token=STRONG).webhook_token is not None


@pytest.mark.parametrize("name", ["webhook_token", "admin_token", "read_token", "heartbeat_token"])
@pytest.mark.parametrize("weak", ["x" * 64, STRONG[:31], "token", "  " + "a" * 40 + "  "])
def test_production_refuses_short_or_repeated_tokens(name: str, weak: str) -> None:
    tokens = {"webhook_token": STRONG, name: weak}
    with pytest.raises(SettingsError, match=f"{name} looks like a placeholder"):
        load_settings(environment="production", **tokens)
    assert load_settings(environment="development", **tokens)  # development takes what it is given


def test_empty_token_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for name in (
        "webhook_token_file",
        "admin_token_file",
        "read_token_file",
        "heartbeat_token_file",
        "session_secret_file",
    ):
        with pytest.raises(SettingsError, match="is empty"):
            load_settings(**{name: empty})


def test_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("file-token-0123456789abcdef\n")
    settings = load_settings(webhook_token_file=secret)
    assert settings.webhook_token is not None
    assert settings.webhook_token.get_secret_value() == "file-token-0123456789abcdef"
    assert "file-token" not in repr(settings)
    with pytest.raises(SettingsError, match="missing"):
        load_settings(webhook_token_file=tmp_path / "missing")


def test_cli_reports_bad_settings_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONTROLPLANE_LOG_LEVEL", "loud")
    assert main(["migrate"]) == 2
    assert "CONTROLPLANE_LOG_LEVEL" in capsys.readouterr().err


POSTGRES = "postgresql://controlplane:9b4e2d7a1c@db.example:5432/controlplane"


def test_production_on_postgresql_refuses_to_start_without_a_shared_session_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replicas share a PostgreSQL database; a random secret per process would log users out on each one."""
    production = {"environment": "production", "database_url": POSTGRES, "webhook_token": STRONG}
    with pytest.raises(SettingsError, match=r"session_secret .* is required in production on PostgreSQL") as refused:
        load_settings(**production)
    assert "replica" in str(refused.value)
    assert load_settings(**production, session_secret=STRONG[::-1]).session_secret is not None
    with pytest.raises(SettingsError, match="session_secret looks like a placeholder"):
        load_settings(**production, session_secret="changeme")
    # SQLite is one process: there is no other replica to disagree with, so no secret is needed.
    assert load_settings(**{**production, "database_url": "sqlite:///cp.db"}).session_secret is None
    assert load_settings(**{**production, "environment": "development"}).session_secret is None
    # What an operator sees: one line naming the setting, exit 2, no traceback.
    for name, value in {"ENVIRONMENT": "production", "DATABASE_URL": POSTGRES, "WEBHOOK_TOKEN": STRONG}.items():
        monkeypatch.setenv(f"CONTROLPLANE_{name}", value)
    assert main(["migrate"]) == 2
    assert "session_secret (or session_secret_file) is required in production on PostgreSQL" in capsys.readouterr().err


@pytest.mark.parametrize("password", ["changeme", "password", "secret"])
def test_production_refuses_a_placeholder_database_password(password: str) -> None:
    production = {"environment": "production", "webhook_token": STRONG, "session_secret": STRONG[::-1]}
    url = POSTGRES.replace("9b4e2d7a1c", password)
    with pytest.raises(SettingsError, match="database_url: the password looks like a placeholder"):
        load_settings(**production, database_url=url)
    assert load_settings(**production, database_url=POSTGRES).database_url == POSTGRES
    assert load_settings(environment="development", database_url=url).database_url == url
