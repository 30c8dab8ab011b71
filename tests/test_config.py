"""Configuration from the environment: defaults and precise errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Config, ConfigError


def test_defaults_are_local_and_embedded():
    config = Config.from_env({})
    assert (config.host, config.port) == ("127.0.0.1", 8080)
    assert config.database_url is None and config.api_key is None and config.local_mode
    assert config.data_dir == Path("./data").resolve()
    assert config.checkpoint_s == 5.0 and config.ice_servers == () and not config.ice_loopback_only


def test_supabase_url_is_accepted_and_secrets_stay_out_of_repr():
    dsn = "postgresql://postgres.abcd:pa55@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
    config = Config.from_env({"SUPABASE_DB_URL": dsn, "API_KEY": "k3y"})
    assert config.database_url == dsn and not config.local_mode
    assert "pa55" not in repr(config) and "k3y" not in repr(config)
    # DATABASE_URL wins when both are set.
    both = Config.from_env({"SUPABASE_DB_URL": dsn, "DATABASE_URL": "postgres://u@h/db"})
    assert both.database_url == "postgres://u@h/db"


def test_ice_servers_json():
    raw = '[{"urls": ["stun:stun.example.org:3478"]}, {"urls": "turn:t.example.org"}]'
    config = Config.from_env({"ICE_SERVERS": raw, "ICE_LOOPBACK_ONLY": "1", "TURN_SECRET": "s"})
    assert len(config.ice_servers) == 2 and config.ice_loopback_only


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PORT": "http"}, "PORT must be an integer"),
        ({"PORT": "70000"}, "PORT must be an integer"),
        ({"DATABASE_URL": "mysql://u:secret@h/db"}, "must be a PostgreSQL connection string"),
        ({"CHECKPOINT_S": "0"}, "CHECKPOINT_S must be greater than 0"),
        ({"CHECKPOINT_S": "soon"}, "CHECKPOINT_S must be a number"),
        ({"ICE_LOOPBACK_ONLY": "maybe"}, "ICE_LOOPBACK_ONLY must be"),
        ({"ICE_SERVERS": "stun:x"}, "ICE_SERVERS must be JSON"),
        ({"ICE_SERVERS": '[{"urls": "http://x"}]'}, "stun:, turn: or turns:"),
        ({"PUBLIC_URL": "example.org"}, "PUBLIC_URL must be an absolute"),
        ({"DETECT_CHANGE": "2"}, "DETECT_CHANGE must be a fraction"),
        ({"DETECT_MAX_INTERVAL_S": "-1"}, "DETECT_MAX_INTERVAL_S must be"),
        ({"WEBHOOK_URL": "ftp://secret@h/x", "WEBHOOK_SECRET": "s"}, "WEBHOOK_URL must be"),
        ({"WEBHOOK_URL": "https://h/secret"}, "WEBHOOK_SECRET is not"),
        ({"WEBHOOK_RETRY_MAX_S": "0"}, "WEBHOOK_RETRY_MAX_S must be greater than 0"),
    ],
)
def test_bad_values_are_refused_precisely(env: dict[str, str], message: str):
    with pytest.raises(ConfigError, match=message) as info:
        Config.from_env(env)
    assert "secret" not in str(info.value)


def test_webhook_settings_and_the_secret_stays_out_of_repr():
    assert Config.from_env({}).webhook_url is None
    config = Config.from_env({"WEBHOOK_URL": "https://hooks.example.org/in",
                              "WEBHOOK_SECRET": "wh5ecret", "WEBHOOK_RETRY_MAX_S": "30"})
    assert config.webhook_url == "https://hooks.example.org/in"
    assert config.webhook_secret == "wh5ecret" and "wh5ecret" not in repr(config)
    assert config.webhook_retry_max_s == 30.0


def test_change_gate_settings():
    config = Config.from_env({"DETECT_CHANGE": "0.01", "DETECT_MAX_INTERVAL_S": "0"})
    assert (config.detect_change, config.detect_max_interval_s) == (0.01, 0.0)
