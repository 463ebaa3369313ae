from pathlib import Path

import pytest
import structlog

from orchestrator.config import ConfigError, load_settings
from orchestrator.logs import configure, redact, scrub


def test_defaults() -> None:
    s = load_settings({})
    assert s.mqtt_topic_prefix == "ota"
    assert s.mqtt_url.host == "127.0.0.1" and s.mqtt_url.port == 1883
    assert s.onenet_url == "http://ota.heclouds.com"
    assert s.api_listen == "127.0.0.1:8080"
    assert s.database_url is None


def test_env_values() -> None:
    s = load_settings({
        "ORCH_DATABASE_URL": "postgresql://u:p@db:5433/x",
        "ORCH_MQTT_URL": "mqtts://user:secret@broker",
        "ORCH_STATUS_MAX_AGE": "60",
        "ORCH_ONENET_PRODUCT_ID": "123", "ORCH_ONENET_ACCESS_KEY": "YWJj",
    })
    assert s.mqtt_url.tls and s.mqtt_url.port == 8883 and s.mqtt_url.password == "secret"
    assert s.status_max_age == 60.0
    assert "secret" not in repr(s) and "YWJj" not in repr(s)


@pytest.mark.parametrize(("env", "name"), [
    ({"ORCH_DATABASE_URL": "mysql://x/y"}, "ORCH_DATABASE_URL"),
    ({"ORCH_DATABASE_URL": "postgresql://h:99999/x"}, "ORCH_DATABASE_URL"),
    ({"ORCH_MQTT_URL": "amqp://h"}, "ORCH_MQTT_URL"),
    ({"ORCH_MQTT_URL": "mqtt://h:port"}, "ORCH_MQTT_URL"),
    ({"ORCH_API_LISTEN": "8080"}, "ORCH_API_LISTEN"),
    ({"ORCH_CLAIM_LEASE": "-1"}, "ORCH_CLAIM_LEASE"),
    ({"ORCH_CLAIM_LEASE": "soon"}, "ORCH_CLAIM_LEASE"),
    ({"ORCH_SCHEDULER_WORKERS": "0"}, "ORCH_SCHEDULER_WORKERS"),
    ({"ORCH_SCHEDULER_WORKERS": "many"}, "ORCH_SCHEDULER_WORKERS"),
    ({"ORCH_LOG_FORMAT": "xml"}, "ORCH_LOG_FORMAT"),
    ({"ORCH_MQTT_TOPIC_PREFIX": "a/b"}, "ORCH_MQTT_TOPIC_PREFIX"),
    ({"ORCH_ONENET_URL": "ftp://x"}, "ORCH_ONENET_URL"),
    ({"ORCH_ONENET_ACCESS_KEY": "YWJj"}, "ORCH_ONENET_PRODUCT_ID"),
    ({"ORCH_ONENET_PRODUCT_ID": "1", "ORCH_ONENET_ACCESS_KEY": "not base64!"},
     "ORCH_ONENET_ACCESS_KEY"),
])
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_toml_file_and_env_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('mqtt_topic_prefix = "fleet"\nclaim_lease = 30\n')
    s = load_settings({"ORCH_CLAIM_LEASE": "45"}, config_file=f)
    assert s.mqtt_topic_prefix == "fleet" and s.claim_lease == 45.0
    f.write_text('nonsense = 1\n')
    with pytest.raises(ConfigError, match="unknown key 'nonsense'"):
        load_settings({}, config_file=f)
    f.write_text('x = \n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, config_file=f)


def test_secrets_are_scrubbed_from_logs() -> None:
    event = {"event": "connecting to postgresql://app:hunter2@db/x",
             "authorization": "version=2018-10-31&sign=abc", "api_token": "t0k",
             "msg": "header version=2018-10-31&res=products%2F1&et=1&method=sha1&sign=s3cr3t",
             "token_expires_at": "2026-01-01"}
    out = redact(None, "info", dict(event))
    text = str(out)
    for secret in ("hunter2", "abc", "t0k", "s3cr3t"):
        assert secret not in text
    assert out["token_expires_at"] == "2026-01-01"
    assert scrub("Bearer abc.def") == "Bearer ***"


def test_scrubbing_covers_nested_values_slashes_tracebacks_and_settings_repr(
        capsys: pytest.CaptureFixture[str]) -> None:
    out = redact(None, "info", {"detail": {"dsn": "postgresql://u:pa/ss@h/db",
                                           "inner": [{"password": "p1"}]}})
    assert "pa/ss" not in str(out) and "p1" not in str(out)
    configure("json", "info")
    log = structlog.get_logger("t")
    try:
        raise RuntimeError("cannot reach mqtt://orch:s3cr/et@broker:1883")
    except RuntimeError:
        log.exception("boom")
    printed = capsys.readouterr().out
    assert "Traceback" in printed and "s3cr/et" not in printed, printed
    settings = load_settings({"ORCH_DATABASE_URL": "postgresql://u:hunter2@db/x",
                              "ORCH_API_TOKEN": "t0k"})
    assert "hunter2" not in repr(settings) and "t0k" not in repr(settings)


def test_numbers_must_be_finite() -> None:
    for value in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match="ORCH_ONENET_TIMEOUT"):
            load_settings({"ORCH_ONENET_TIMEOUT": value})
