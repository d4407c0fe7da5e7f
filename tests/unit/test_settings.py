"""Settings read from the environment: defaults, one clear error per bad value, no leaked secret;
each declared once, and what is derived from them following their declarations."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import attrs
import pytest

from actors.domain.events import EVENT_TYPES, Limits
from actors.runtime.settings import (
    SECRET_VARIABLES,
    SETTINGS,
    LimitSettings,
    Settings,
    SettingsError,
    declared_settings,
    load_settings,
    setting,
)

PASSWORD = "s3cr3t-hunter2-password"


def error_for(**environ: str) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    return caught.value


def test_defaults() -> None:
    """An empty environment gives the documented defaults."""
    settings = load_settings({})
    assert settings.http.port == 3000
    assert settings.http.host == "0.0.0.0"
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.topic == "user-activity-events"
    assert settings.kafka.consumer_group == "user-activity-consumer-group"
    assert settings.kafka.dlq_topic is None
    assert settings.limits.event_types == EVENT_TYPES
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.kafka.sasl_mechanism is None
    assert settings.kafka.sasl_password is None
    assert settings.kafka.session_timeout_ms == 45_000
    assert settings.kafka.heartbeat_interval_ms == 3_000
    assert settings.publish.timeout_ms == 5_000
    assert settings.limits.max_body_bytes == 65_536
    assert settings.supervision.restart_backoff_max_ms == 16_000
    assert settings.log.level == "INFO"


def test_every_default_parses_to_its_field() -> None:
    """Each setting's default, given explicitly, gives the same value as leaving it out."""
    explicit = load_settings({declared.variable: declared.default for declared in SETTINGS})
    assert explicit == load_settings({})
    settings = load_settings({})
    for declared in SETTINGS:
        value = getattr(getattr(settings, declared.group), declared.field)
        if declared.variable != "KAFKA_HEARTBEAT_INTERVAL_MS":  # empty: derived, tested below
            assert value == declared.parse(declared.default), declared.variable


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
    assert settings.http.port == 8080
    assert settings.kafka.topic == "events"
    assert settings.limits.event_types == frozenset({"LOGIN", "LOGOUT"})
    assert settings.log.level == "DEBUG"
    assert settings.kafka.security_protocol == "SASL_SSL"


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
        (
            {"RESTART_BACKOFF_MS": "20000", "RESTART_BACKOFF_MAX_MS": "16000"},
            "RESTART_BACKOFF_MS",
        ),
        ({"RESTART_BACKOFF_MAX_MS": "0"}, "RESTART_BACKOFF_MAX_MS"),
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
        assert (settings.kafka.session_timeout_ms, settings.kafka.heartbeat_interval_ms) == (
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
    assert settings.kafka.heartbeat_interval_ms == 9999


def test_sasl_with_mechanism_is_accepted() -> None:
    """A SASL protocol with a mechanism loads."""
    settings = load_settings(
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}
    )
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-512"


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
    assert settings.kafka.sasl_password == PASSWORD
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


# --- each setting declared once ---------------------------------------------------------------


def _int(raw: str) -> int:
    return int(raw)


@attrs.frozen(kw_only=True)
class _FirstGroup:
    port: int = setting("SOME_PORT", "1", _int, "A port.")


@attrs.frozen(kw_only=True)
class _SecondGroup:
    other_port: int = setting("SOME_PORT", "2", _int, "The same variable again.")


@attrs.frozen(kw_only=True)
class _DeclaredTwice:
    first: _FirstGroup
    second: _SecondGroup


@attrs.frozen(kw_only=True)
class _HalfDeclaredGroup:
    port: int = setting("SOME_PORT", "1", _int, "A port.")
    undeclared: int


@attrs.frozen(kw_only=True)
class _HalfDeclared:
    group: _HalfDeclaredGroup


@attrs.frozen(kw_only=True)
class _NotAGroup:
    first: _FirstGroup
    loose: int


def test_a_variable_declared_twice_is_refused() -> None:
    """Two fields declaring one variable make the declarations unreadable, naming both."""
    with pytest.raises(TypeError, match=r"SOME_PORT is declared twice: first\.port and second\."):
        declared_settings(_DeclaredTwice)


def test_a_group_field_without_a_declaration_is_refused() -> None:
    """A group field not declared with setting() (no variable, parser or doc) is refused."""
    with pytest.raises(TypeError, match=r"_HalfDeclaredGroup\.undeclared is not declared"):
        declared_settings(_HalfDeclared)


def test_a_settings_field_that_is_not_a_group_is_refused() -> None:
    """Settings compose groups only: a loose value there is refused."""
    with pytest.raises(TypeError, match=r"_NotAGroup\.loose is not a group"):
        declared_settings(_NotAGroup)


@pytest.mark.parametrize(
    ("variable", "parse", "doc", "problem"),
    [
        ("SOME_PORT", _int, "", "doc"),
        ("SOME_PORT", _int, "   ", "doc"),
        ("SOME_PORT", None, "A port.", "parse"),
        ("some_port", _int, "A port.", "upper-case"),
        ("", _int, "A port.", "upper-case"),
    ],
)
def test_a_declaration_lacking_a_part_is_refused(
    variable: str, parse: Any, doc: str, problem: str
) -> None:
    """setting() refuses a declaration without a proper variable, a parser or a description."""
    with pytest.raises(TypeError, match=problem):
        setting(variable, "1", parse, doc)


def test_every_field_of_every_group_is_one_declared_setting() -> None:
    """SETTINGS holds each field of each group exactly once, in declaration order, each with
    a parser and a description; and each variable once."""
    expected = [
        (group.name, field.name)
        for group in attrs.fields(Settings)
        for field in attrs.fields(group.type)
    ]
    assert [(declared.group, declared.field) for declared in SETTINGS] == expected
    assert len({declared.variable for declared in SETTINGS}) == len(SETTINGS)
    for declared in SETTINGS:
        assert callable(declared.parse), declared.variable
        assert declared.doc.strip(), declared.variable


def test_secret_settings_are_marked_on_their_declaration() -> None:
    """The SASL password is the secret, and it is left out of its group's repr."""
    assert frozenset({"KAFKA_SASL_PASSWORD"}) == SECRET_VARIABLES
    (password,) = [declared for declared in SETTINGS if declared.secret]
    field = attrs.fields_dict(Settings)[password.group].type
    assert attrs.fields_dict(field)[password.field].repr is False


# --- what is derived follows the declarations --------------------------------------------------


def declared_default(variable: str) -> Any:
    """The value a variable's declared default parses to."""
    (found,) = [candidate for candidate in SETTINGS if candidate.variable == variable]
    return found.parse(found.default)


def test_limits_declare_no_defaults_of_their_own() -> None:
    """Limits (domain) has no defaults: every value comes from a LimitSettings declaration."""
    limit_fields = attrs.fields(Limits)
    assert [field.name for field in limit_fields if field.default is not attrs.NOTHING] == []
    assert {field.name for field in limit_fields} <= set(attrs.fields_dict(LimitSettings))


def test_default_limits_are_the_declared_defaults() -> None:
    """Limits built from default settings hold each limit's declared default."""
    limits = load_settings({}).limits.limits()
    by_field = {found.field: found for found in SETTINGS if found.group == "limits"}
    for field in attrs.fields(Limits):
        found = by_field[field.name]
        assert getattr(limits, field.name) == found.parse(found.default), found.variable


def test_limits_follow_their_settings() -> None:
    """Each limit set in the environment reaches the Limits."""
    limits = load_settings(
        {
            "EVENT_TYPES": "LOGIN",
            "MAX_USER_ID_LENGTH": "7",
            "MAX_PAYLOAD_DEPTH": "3",
            "MAX_PAYLOAD_BYTES": "99",
        }
    ).limits.limits()
    assert limits == Limits(
        event_types=frozenset({"LOGIN"}),
        max_user_id_length=7,
        max_payload_depth=3,
        max_payload_bytes=99,
    )


def test_default_restart_policy_is_the_declared_one() -> None:
    """The default restart backoff runs from RESTART_BACKOFF_MS up to RESTART_BACKOFF_MAX_MS,
    whose default keeps the cap at 32 times the first delay, as before it was a setting."""
    policy = load_settings({}).supervision.restart_policy()
    assert policy.backoff.initial == declared_default("RESTART_BACKOFF_MS") / 1000
    assert policy.backoff.maximum == declared_default("RESTART_BACKOFF_MAX_MS") / 1000
    assert policy.backoff.maximum == policy.backoff.initial * 32
    assert policy.max_failures == declared_default("RESTART_MAX_FAILURES")
    assert policy.window == declared_default("RESTART_WINDOW_MS") / 1000


def test_restart_policy_follows_its_settings() -> None:
    """Each restart setting reaches the policy, in seconds."""
    policy = load_settings(
        {
            "RESTART_BACKOFF_MS": "250",
            "RESTART_BACKOFF_MAX_MS": "9000",
            "RESTART_MAX_FAILURES": "7",
            "RESTART_WINDOW_MS": "30000",
        }
    ).supervision.restart_policy()
    assert (policy.backoff.initial, policy.backoff.maximum) == (0.25, 9.0)
    assert (policy.max_failures, policy.window) == (7, 30.0)


def test_publish_backoff_and_durations_follow_their_settings() -> None:
    """The publish retry backoff, the publish timeout and the producer replacement delay are
    the declared defaults in seconds, and follow the environment."""
    publish = load_settings({}).publish
    backoff = publish.retry_backoff()
    assert backoff.initial == declared_default("PUBLISH_RETRY_BACKOFF_MS") / 1000
    assert backoff.maximum == declared_default("PUBLISH_RETRY_BACKOFF_MAX_MS") / 1000
    assert publish.timeout == declared_default("PUBLISH_TIMEOUT_MS") / 1000
    assert publish.replace_producer_after == declared_default("PRODUCER_REPLACE_AFTER_MS") / 1000
    changed = load_settings(
        {
            "PUBLISH_RETRY_BACKOFF_MS": "50",
            "PUBLISH_RETRY_BACKOFF_MAX_MS": "700",
            "PUBLISH_TIMEOUT_MS": "1500",
            "PRODUCER_REPLACE_AFTER_MS": "2500",
        }
    ).publish
    assert (changed.retry_backoff().initial, changed.retry_backoff().maximum) == (0.05, 0.7)
    assert (changed.timeout, changed.replace_producer_after) == (1.5, 2.5)


@pytest.mark.parametrize(
    ("publish_timeout_ms", "shutdown_timeout_ms", "graceful"),
    [("5000", "10000", 6.0), ("20000", "4000", 4.0), ("2500", "3500", 3.5)],
)
def test_http_graceful_timeout_is_a_publish_and_a_second_within_shutdown(
    publish_timeout_ms: str, shutdown_timeout_ms: str, graceful: float
) -> None:
    """HTTP waits for in-flight requests a publish timeout plus 1 s, capped by the shutdown."""
    settings = load_settings(
        {"PUBLISH_TIMEOUT_MS": publish_timeout_ms, "SHUTDOWN_TIMEOUT_MS": shutdown_timeout_ms}
    )
    assert settings.http_graceful_timeout == graceful
    assert settings.supervision.shutdown_timeout == int(shutdown_timeout_ms) / 1000


def test_topics_are_the_topic_and_the_dead_letter_topic_if_set() -> None:
    """The service's topics: its own, and the dead-letter topic only when one is set."""
    assert load_settings({"KAFKA_TOPIC": "t"}).kafka.topics() == ["t"]
    assert load_settings({"KAFKA_TOPIC": "t", "KAFKA_DLQ_TOPIC": "d"}).kafka.topics() == ["t", "d"]
