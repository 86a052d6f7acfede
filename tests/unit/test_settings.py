"""Settings: STREAMQUANT_* variables, an optional file, secrets kept out of output, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamquant.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("STREAMQUANT_"):
            monkeypatch.delenv(name)


def test_variables_map_to_sections_and_librdkafka_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMQUANT_KAFKA_BOOTSTRAP", "broker-1:9093,broker-2:9093")
    monkeypatch.setenv("STREAMQUANT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMQUANT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("STREAMQUANT_KAFKA_SASL_USERNAME", "features")
    monkeypatch.setenv("STREAMQUANT_KAFKA_SASL_PASSWORD", "s3cret-value")
    monkeypatch.setenv("STREAMQUANT_KAFKA_SSL_CA_LOCATION", "/etc/ca.pem")
    monkeypatch.setenv("STREAMQUANT_INGEST_MAX_BATCH", "2000")
    s = load_settings()
    conf = s.kafka.client_config()
    assert conf["bootstrap.servers"] == "broker-1:9093,broker-2:9093"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "s3cret-value"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    assert s.ingest.max_batch == 2000
    # The secret never shows in reprs or in the redacted view meant for logs.
    assert "s3cret-value" not in repr(s)
    assert "s3cret-value" not in str(s.kafka.redacted())


def test_passthrough_options_for_any_librdkafka_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMQUANT_KAFKA_OPTIONS", '{"socket.keepalive.enable": "true"}')
    assert load_settings().kafka.client_config()["socket.keepalive.enable"] == "true"


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("STREAMQUANT_KAFKA_BOOTSTRAPS", "x", "kafka.bootstraps"),
        ("STREAMQUANT_WHATEVER_X", "1", "STREAMQUANT_WHATEVER_X"),
        ("STREAMQUANT_KAFKA", "1", "STREAMQUANT_KAFKA"),
        ("STREAMQUANT_INGEST_MAX_BATCH", "lots", "ingest.max_batch"),
        ("STREAMQUANT_KAFKA_SECURITY_PROTOCOL", "TLS", "kafka.security_protocol"),
    ],
)
def test_unknown_or_invalid_settings_are_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                fragment: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=fragment.replace(".", r"\.")):
        load_settings()


def test_toml_and_yaml_files_with_variables_taking_precedence(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "sq.toml"
    toml.write_text('[kafka]\nbootstrap = "file:9092"\nclient_id = "from-file"\n[topics]\nprefix = "dev."\n')
    s = load_settings(toml)
    assert (s.kafka.bootstrap, s.kafka.client_id, s.topics.prefix) == ("file:9092", "from-file", "dev.")
    monkeypatch.setenv("STREAMQUANT_KAFKA_BOOTSTRAP", "env:9092")
    s = load_settings(toml)
    assert (s.kafka.bootstrap, s.kafka.client_id) == ("env:9092", "from-file")

    yml = tmp_path / "sq.yaml"
    yml.write_text("ingest:\n  max_wait_ms: 5\n")
    monkeypatch.setenv("STREAMQUANT_CONFIG", str(yml))
    assert load_settings().ingest.max_wait_ms == 5


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka\n")
    with pytest.raises(SettingsError, match="not valid"):
        load_settings(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[kafak]\nbootstrap='x'\n")
    with pytest.raises(SettingsError, match="unknown section"):
        load_settings(unknown)
    nested = tmp_path / "nested.toml"
    nested.write_text("[kafka]\nbootstarp='x'\n")
    with pytest.raises(SettingsError, match=r"kafka\.bootstarp"):
        load_settings(nested)
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(Exception):  # noqa: B017  (pydantic raises ValidationError on assignment)
        s.kafka.bootstrap = "x"  # type: ignore[misc]
