"""Settings read from the environment: defaults, one clear error per bad value, no leaked secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from actors.domain.events import EVENT_TYPES
from actors.runtime.settings import SETTINGS, Settings, SettingsError, load_settings

PASSWORD = "s3cr3t-hunter2-password"


def error_for(**environ: str) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return caught.value


def test_defaults() -> None:
    """An empty environment gives the documented defaults."""
    settings = load_settings({})
    assert settings.http_port == 3000
    assert settings.http_host == "0.0.0.0"
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.topic == "user-activity-events"
    assert settings.consumer_group == "user-activity-consumer-group"
    assert settings.dlq_topic is None
    assert settings.event_types == EVENT_TYPES
    assert settings.security_protocol == "PLAINTEXT"
    assert settings.sasl_mechanism is None
    assert settings.sasl_password is None
    assert settings.session_timeout_ms == 45_000
    assert settings.heartbeat_interval_ms == 3_000
    assert settings.publish_timeout_ms == 5_000
    assert settings.max_body_bytes == 65_536
    assert settings.log_level == "INFO"


def test_every_default_parses_to_its_field() -> None:
    """Each setting's default, given explicitly, gives the same value as leaving it out."""
    explicit = load_settings({setting.variable: setting.default for setting in SETTINGS})
    assert explicit == load_settings({})
    assert {setting.field for setting in SETTINGS} == {
        field.name for field in Settings.__attrs_attrs__
    }


def test_values_are_parsed() -> None:
    """Values are stripped and converted: integers, upper-cased choices, event type sets."""
    settings = load_settings(
        {
            "HTTP_PORT": " 8080 ",
            "KAFKA_TOPIC": " events ",
            "EVENT_TYPES": "LOGIN, LOGOUT,",
            "LOG_LEVEL": "debug",
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "PLAIN",
        }
    )
    assert settings.http_port == 8080
    assert settings.topic == "events"
    assert settings.event_types == frozenset({"LOGIN", "LOGOUT"})
    assert settings.log_level == "DEBUG"
    assert settings.security_protocol == "SASL_SSL"


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"HTTP_PORT": "http"}, "HTTP_PORT"),
        ({"HTTP_PORT": "3000.5"}, "HTTP_PORT"),
        ({"HTTP_PORT": ""}, "HTTP_PORT"),
        ({"HTTP_PORT": "65536"}, "HTTP_PORT"),
        ({"HTTP_PORT": "-1"}, "HTTP_PORT"),
        ({"KAFKA_TOPIC": ""}, "KAFKA_TOPIC"),
        ({"KAFKA_TOPIC": "   "}, "KAFKA_TOPIC"),
        ({"EVENT_TYPES": "LOGIN,SIGNUP"}, "EVENT_TYPES"),
        ({"EVENT_TYPES": " , "}, "EVENT_TYPES"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
        (
            {"KAFKA_HEARTBEAT_INTERVAL_MS": "20000", "KAFKA_SESSION_TIMEOUT_MS": "45000"},
            "KAFKA_HEARTBEAT_INTERVAL_MS",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_DLQ_TOPIC": "user-activity-events"}, "KAFKA_DLQ_TOPIC"),
        ({"KAFKA_TOPIC": "t", "KAFKA_DLQ_TOPIC": " t "}, "KAFKA_DLQ_TOPIC"),
        (
            {"PUBLISH_RETRY_BACKOFF_MS": "300", "PUBLISH_RETRY_BACKOFF_MAX_MS": "200"},
            "PUBLISH_RETRY_BACKOFF_MS",
        ),
    ],
)
def test_bad_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    """Each kind of bad value raises SettingsError whose message starts with the variable."""
    error = error_for(**environ)
    assert error.variable == variable
    assert str(error).startswith(f"{variable}: ")


def test_non_numeric_port_message_quotes_the_value() -> None:
    """A non-numeric HTTP_PORT says it must be an integer and quotes what it got."""
    assert str(error_for(HTTP_PORT="http")) == "HTTP_PORT: must be an integer, got 'http'"


def test_out_of_range_port_message_gives_the_range() -> None:
    """An out-of-range HTTP_PORT gives the allowed range."""
    assert str(error_for(HTTP_PORT="70000")) == (
        "HTTP_PORT: must be between 0 and 65535, got 70000"
    )


def test_unknown_event_type_message_lists_known_ones() -> None:
    """An unknown EVENT_TYPES entry is named along with the known ones."""
    assert str(error_for(EVENT_TYPES="LOGIN,SIGNUP")) == (
        "EVENT_TYPES: unknown event type(s) SIGNUP; known: LOGIN, LOGOUT, PRODUCT_VIEW"
    )


@pytest.mark.parametrize(
    ("session", "heartbeat"), [("45000", 3000), ("9000", 3000), ("6000", 2000), ("1000", 333)]
)
def test_heartbeat_not_set_is_derived_from_the_session_timeout(
    session: str, heartbeat: int
) -> None:
    """Without KAFKA_HEARTBEAT_INTERVAL_MS, any valid session timeout alone is accepted and the
    heartbeat is librdkafka's 3000 or a third of the session timeout, whichever is less."""
    for environ in (
        {"KAFKA_SESSION_TIMEOUT_MS": session},
        {"KAFKA_SESSION_TIMEOUT_MS": session, "KAFKA_HEARTBEAT_INTERVAL_MS": " "},
    ):
        settings = load_settings(environ)
        assert (settings.session_timeout_ms, settings.heartbeat_interval_ms) == (
            int(session),
            heartbeat,
        )


def test_heartbeat_above_a_third_of_session_is_rejected() -> None:
    """A heartbeat above a third of the session timeout is rejected; well below it passes."""
    error = error_for(KAFKA_SESSION_TIMEOUT_MS="30000", KAFKA_HEARTBEAT_INTERVAL_MS="10001")
    assert str(error) == (
        "KAFKA_HEARTBEAT_INTERVAL_MS: must be at most a third of KAFKA_SESSION_TIMEOUT_MS (30000)"
    )
    settings = load_settings(
        {"KAFKA_SESSION_TIMEOUT_MS": "30000", "KAFKA_HEARTBEAT_INTERVAL_MS": "9999"}
    )
    assert settings.heartbeat_interval_ms == 9999


def test_sasl_with_mechanism_is_accepted() -> None:
    """A SASL protocol with a mechanism loads."""
    settings = load_settings(
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    )
    assert settings.sasl_mechanism == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    "environ",
    [
        {"HTTP_PORT": "nope"},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        {"EVENT_TYPES": "SIGNUP"},
        {"KAFKA_SASL_USERNAME": "alice", "KAFKA_DLQ_TOPIC": "user-activity-events"},
        {"KAFKA_HEARTBEAT_INTERVAL_MS": "40000"},
        {"LOG_LEVEL": "LOUD"},
    ],
)
def test_password_never_in_error_message(environ: dict[str, str]) -> None:
    """Whatever variable is wrong, the SASL password does not appear in the error."""
    error = error_for(KAFKA_SASL_PASSWORD=PASSWORD, **environ)
    assert PASSWORD not in str(error)
    assert PASSWORD not in repr(error)


def test_password_never_in_repr() -> None:
    """repr and str of Settings leave the SASL password out."""
    settings = load_settings(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "alice",
            "KAFKA_SASL_PASSWORD": PASSWORD,
        }
    )
    assert settings.sasl_password == PASSWORD
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings)
    assert "alice" in repr(settings)


def test_main_exits_2_with_one_line_naming_the_variable() -> None:
    """`python -m actors` with a bad HTTP_PORT exits 2 and prints one stderr line naming it."""
    environ = {**os.environ, "HTTP_PORT": "not-a-port", "KAFKA_SASL_PASSWORD": PASSWORD}
    result = subprocess.run(
        [sys.executable, "-m", "actors"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "HTTP_PORT" in lines[0]
    assert lines[0] == "configuration error: HTTP_PORT: must be an integer, got 'not-a-port'"
    assert PASSWORD not in result.stderr + result.stdout
