"""Unit tests of configuration loading (gateway/config.py): TOML, env overrides, secret references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    Config,
    ConfigError,
    config_from_dict,
    inline_core_secrets,
    inline_secrets,
    load_config,
    resolve_reference,
)

NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(raw: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw, NO_ENV if environ is None else environ)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------------------


def test_defaults_without_a_file() -> None:
    config = load_config(None, environ=NO_ENV)
    assert config == Config()
    assert config.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert config.redis.url == "redis://127.0.0.1:6379/0"
    assert config.http.host == "127.0.0.1"
    assert config.http.port == 8080
    assert config.gateway.topic_prefix == "gateway."
    assert config.gateway.environment == "development"
    assert config.worker.processors is None
    assert config.channels == {}
    assert config.processors == {}


def test_fail_fast_defaults_follow_the_environment() -> None:
    assert config_from_dict({}, NO_ENV).fail_fast is False
    assert config_from_dict({"gateway": {"environment": "production"}}, NO_ENV).fail_fast is True


def test_fail_fast_explicit_setting_wins_over_the_environment() -> None:
    prod_lenient = config_from_dict({"gateway": {"environment": "production"}, "plugins": {"fail_fast": False}}, NO_ENV)
    dev_strict = config_from_dict({"plugins": {"fail_fast": True}}, NO_ENV)
    assert prod_lenient.fail_fast is False
    assert dev_strict.fail_fast is True


# --- TOML files ---------------------------------------------------------------------------------------


def test_toml_file_in_the_documented_shape(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[kafka]
bootstrap_servers = "kafka-1:9092,kafka-2:9092"
linger_ms = 20
[redis]
url = "redis://redis:6379/2"
[http]
host = "10.0.0.5"
port = 9000

[channels.support-wa]
type = "whatsapp"
app_secret = "env:META_APP_SECRET"
verify_token = "env:META_VERIFY_TOKEN"

[worker]
processors = ["passthrough"]

[processors.passthrough]
enabled = false
""",
    )
    config = load_config(path, environ=NO_ENV)
    assert config.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert config.kafka.linger_ms == 20
    assert config.redis.url == "redis://redis:6379/2"
    assert config.http.host == "10.0.0.5"
    assert config.http.port == 9000
    assert config.worker.processors == ["passthrough"]
    assert config.processors == {"passthrough": {"enabled": False}}
    # channel tables are kept unresolved: only the adapter knows which settings are secrets
    assert config.channels == {
        "support-wa": {
            "type": "whatsapp",
            "app_secret": "env:META_APP_SECRET",
            "verify_token": "env:META_VERIFY_TOKEN",
        }
    }


def test_load_config_accepts_a_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 8181\n")
    assert load_config(str(path), environ=NO_ENV).http.port == 8181


def test_invalid_toml_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka\nbootstrap_servers = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    assert str(info.value).startswith(f"{path}: invalid TOML")


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        load_config(missing, environ=NO_ENV)


def test_validation_errors_from_a_file_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nlinger_ms = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=NO_ENV)
    assert str(info.value).startswith("kafka.linger_ms: ")


# --- environment overrides ---------------------------------------------------------------------------


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[kafka]\nbootstrap_servers = "file-kafka:9092"\n[redis]\nurl = "redis://file-redis:6379/0"\n'
    )
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "env-kafka:9093", "REDIS_URL": "redis://env-redis:6380/1"}
    config = load_config(path, environ=environ)
    assert config.kafka.bootstrap_servers == "env-kafka:9093"
    assert config.redis.url == "redis://env-redis:6380/1"


def test_file_values_apply_when_env_is_absent_or_empty(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[kafka]\nbootstrap_servers = "file-kafka:9092"\n[redis]\nurl = "redis://file-redis:6379/0"\n'
    )
    for environ in (NO_ENV, {"KAFKA_BOOTSTRAP_SERVERS": "", "REDIS_URL": ""}):
        config = load_config(path, environ=environ)
        assert config.kafka.bootstrap_servers == "file-kafka:9092"
        assert config.redis.url == "redis://file-redis:6379/0"


def test_env_overrides_apply_without_a_file() -> None:
    config = load_config(None, environ={"KAFKA_BOOTSTRAP_SERVERS": "k:1", "REDIS_URL": "redis://r:2/0"})
    assert config.kafka.bootstrap_servers == "k:1"
    assert config.redis.url == "redis://r:2/0"


# --- secret references --------------------------------------------------------------------------------


def test_env_reference_in_a_core_section_is_resolved() -> None:
    config = config_from_dict(
        {"kafka": {"sasl_username": "gw", "sasl_password": "env:KAFKA_PASSWORD"}}, {"KAFKA_PASSWORD": "s3cr3t"}
    )
    assert config.kafka.sasl_password == "s3cr3t"
    assert config.kafka.sasl_username == "gw"


def test_file_reference_in_a_core_section_is_resolved_and_stripped(tmp_path: Path) -> None:
    secret = write(tmp_path, "from-a-file\n", name="kafka_password")
    config = config_from_dict({"kafka": {"sasl_password": f"file:{secret}"}}, NO_ENV)
    assert config.kafka.sasl_password == "from-a-file"


def test_missing_env_variable_names_the_key_and_variable() -> None:
    error = config_error({"kafka": {"sasl_password": "env:KAFKA_PASSWORD"}})
    assert error.startswith("kafka.sasl_password: ")
    assert "KAFKA_PASSWORD" in error


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    error = config_error({"kafka": {"sasl_password": f"file:{tmp_path / 'absent'}"}})
    assert error.startswith("kafka.sasl_password: cannot read secret file")


def test_channel_references_are_not_resolved_by_the_core() -> None:
    # an unset variable in a channel table is not an error here: build_channels resolves it
    config = config_from_dict({"channels": {"api": {"secret": "env:UNSET"}}}, NO_ENV)
    assert config.channels["api"]["secret"] == "env:UNSET"


def test_resolve_reference_walks_tables_and_lists() -> None:
    environ = {"A": "alpha", "B": "beta"}
    resolved = resolve_reference({"x": "env:A", "y": ["plain", "env:B"], "z": {"n": 1}}, "t", environ)
    assert resolved == {"x": "alpha", "y": ["plain", "beta"], "z": {"n": 1}}
    with pytest.raises(ConfigError, match=r"^t\.y\[1\]: environment variable C is not set"):
        resolve_reference({"y": ["ok", "env:C"]}, "t", environ)


def test_inline_secrets_lists_only_literal_values() -> None:
    raw = {"secret": "literal", "token": "env:T", "key": "file:/run/secrets/k", "other": "literal"}
    assert inline_secrets(raw, frozenset({"secret", "token", "key", "missing"})) == ["secret"]


# --- production refuses inline secrets in the core sections --------------------------------------------

PRODUCTION = {"environment": "production"}
INLINE_KEY = "k" * 32


def test_production_refuses_every_inline_core_secret_naming_each() -> None:
    raw = {
        "gateway": PRODUCTION,
        "api": {"keys": ["env:GATEWAY_API_KEY", INLINE_KEY]},
        "kafka": {"sasl_username": "gw", "sasl_password": "s3cr3t-password"},
        "redis": {"url": "rediss://:hunter2-password@redis.example.com:6380/0"},
    }
    error = config_error(raw, {"GATEWAY_API_KEY": INLINE_KEY})
    assert error.startswith("api.keys[1], kafka.sasl_password, redis.url: secrets must be references")
    assert "in production" in error and 'url = "env:REDIS_URL"' in error
    # The message names the settings, never their values.
    assert "s3cr3t" not in error and "hunter2" not in error and INLINE_KEY not in error


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("api", "keys", [INLINE_KEY]),
        ("kafka", "sasl_password", "s3cr3t-password"),
        ("redis", "url", "redis://gateway:s3cr3t@redis:6379/0"),
        ("redis", "url", "redis://:s3cr3t@redis:6379/0"),
    ],
)
def test_production_refuses_each_kind_of_inline_core_secret(section: str, key: str, value: Any) -> None:
    error = config_error({"gateway": PRODUCTION, section: {key: value}})
    assert error.split(":", 1)[0] == (f"{section}.{key}[0]" if isinstance(value, list) else f"{section}.{key}")


def test_production_accepts_references_and_a_redis_url_without_password(tmp_path: Path) -> None:
    secret = write(tmp_path, "redis://:from-a-file@redis:6379/0\n", name="redis_url")
    environ = {"GATEWAY_API_KEY": INLINE_KEY, "KAFKA_PASSWORD": "s3cr3t"}
    raw = {
        "gateway": PRODUCTION,
        "api": {"keys": ["env:GATEWAY_API_KEY"]},
        "kafka": {"sasl_password": "env:KAFKA_PASSWORD"},
        "redis": {"url": f"file:{secret}"},
    }
    config = config_from_dict(raw, environ)
    assert config.api.keys == [INLINE_KEY] and config.kafka.sasl_password == "s3cr3t"
    assert config.redis.url == "redis://:from-a-file@redis:6379/0"
    # A URL without a password is not a secret; nor is a user name alone.
    for url in ("redis://redis:6379/0", "redis://gateway@redis:6379/0", "unix:///run/redis.sock"):
        assert config_from_dict({"gateway": PRODUCTION, "redis": {"url": url}}, NO_ENV).redis.url == url


def test_development_accepts_inline_core_secrets_and_lists_them() -> None:
    raw = {"api": {"keys": [INLINE_KEY]}, "kafka": {"sasl_password": "pw"}, "redis": {"url": "redis://:pw@r:6379/0"}}
    assert inline_core_secrets(raw) == ["api.keys[0]", "kafka.sasl_password", "redis.url"]
    assert config_from_dict(raw, NO_ENV).api.keys == [INLINE_KEY]


def test_production_file_with_an_inline_api_key_does_not_start(tmp_path: Path) -> None:
    """The real command, as an operator runs it: refused at start, before connecting to anything."""
    config = write(tmp_path, f'[gateway]\nenvironment = "production"\n[api]\nkeys = ["{INLINE_KEY}"]\n')
    gateway = str(Path(sys.executable).with_name("gateway"))
    result = subprocess.run(
        [gateway, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "invalid configuration: api.keys[0]: secrets must be references" in result.stderr
    assert INLINE_KEY not in result.stderr


# --- invalid values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"kafka": {"linger_ms": "x"}}, "kafka.linger_ms"),
        ({"kafka": {"partitions": 0}}, "kafka.partitions"),
        ({"kafka": {"compression_type": "brotli"}}, "kafka.compression_type"),
        ({"kafka": {"compression_level": 10}}, "kafka.compression_level"),  # gzip: 1-9 (tests/test_compression.py)
        ({"http": {"port": 70000}}, "http.port"),
        ({"redis": {"on_failure": "ignore"}}, "redis.on_failure"),
        ({"gateway": {"environment": "staging"}}, "gateway.environment"),
        ({"worker": {"processors": "passthrough"}}, "worker.processors"),
        ({"logging": {"level": "verbose"}}, "logging.level"),
    ],
)
def test_invalid_values_name_the_dotted_key(raw: dict[str, Any], key: str) -> None:
    assert config_error(raw).startswith(f"{key}: ")


def test_unknown_key_in_a_section_names_the_section_and_key() -> None:
    error = config_error({"http": {"prot": 8080}})
    assert error.startswith("http.prot: ")
    assert "unknown field" in error


def test_unknown_top_level_section_is_rejected() -> None:
    assert "kafak" in config_error({"kafak": {}})


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "x" * 65, "a/b", ""])
def test_bad_instance_name_is_rejected(name: str) -> None:
    error = config_error({"channels": {name: {"type": "api"}}})
    assert error.startswith(f"channels.{name}: ")


@pytest.mark.parametrize("name", ["support-wa", "api", "tg_2", "a.b", "x" * 64])
def test_good_instance_names_are_accepted(name: str) -> None:
    assert name in config_from_dict({"channels": {name: {"type": "api"}}}, NO_ENV).channels


def test_channel_type_must_be_a_string() -> None:
    assert config_error({"channels": {"x": {"type": 3}}}).startswith("channels.x.type: ")


@pytest.mark.parametrize("prefix", ["", "has space.", "a/b", "ünicode."])
def test_bad_topic_prefix_is_rejected(prefix: str) -> None:
    assert config_error({"gateway": {"topic_prefix": prefix}}).startswith("gateway.topic_prefix: ")


def test_good_topic_prefix_is_accepted() -> None:
    assert config_from_dict({"gateway": {"topic_prefix": "acme_cs-prod."}}, NO_ENV).gateway.topic_prefix == (
        "acme_cs-prod."
    )
