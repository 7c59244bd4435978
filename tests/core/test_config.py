"""Settings refuse unsafe defaults outside development."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from planner.core.config import DEFAULT_ADMIN_TOKEN, Settings
from planner.core.errors import ConfigError


def test_default_admin_token_is_refused_outside_development() -> None:
    Settings(environment="development")  # allowed: a laptop
    with pytest.raises(ConfigError, match="PLANNER_ADMIN_TOKEN"):
        Settings(environment="production", admin_token=SecretStr(DEFAULT_ADMIN_TOKEN))


def test_short_tokens_are_refused_outside_development() -> None:
    with pytest.raises(ConfigError, match="shorter"):
        Settings(environment="production", admin_token=SecretStr("short"))
    with pytest.raises(ConfigError, match="PLANNER_ENROLLMENT_TOKEN"):
        Settings(environment="production", admin_token=SecretStr("a" * 32), enrollment_token=SecretStr("b"))


def test_enrollment_token_must_differ_from_admin() -> None:
    with pytest.raises(ConfigError, match="different secret"):
        Settings(admin_token=SecretStr("a" * 32), enrollment_token=SecretStr("a" * 32))
    ok = Settings(environment="production", admin_token=SecretStr("a" * 32), enrollment_token=SecretStr("b" * 32))
    assert ok.enrollment_token is not None


def test_the_environment_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_ENVIRONMENT", "production")
    monkeypatch.setenv("PLANNER_ADMIN_TOKEN", DEFAULT_ADMIN_TOKEN)
    with pytest.raises(ConfigError):
        Settings()


def test_serving_needs_a_real_admin_token_outside_explicit_dev_mode_and_beyond_loopback_always() -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        with pytest.raises(ConfigError, match="PLANNER_ADMIN_TOKEN is not set"):
            Settings(environment="development", api_host=host).check_serving()  # no token, no dev mode
        Settings(environment="development", api_host=host, dev_mode=True).check_serving()  # a laptop, explicitly
    for host in ("0.0.0.0", "10.1.2.3", "planner.internal"):
        with pytest.raises(ConfigError, match=f"listens on {host}"):
            Settings(environment="development", api_host=host, dev_mode=True).check_serving()
    Settings(environment="development", api_host="0.0.0.0", admin_token=SecretStr("a" * 32)).check_serving()
