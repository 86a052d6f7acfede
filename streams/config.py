"""Kafka client settings: snake_case fields that map to librdkafka's dotted keys, secrets kept secret."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class KafkaConfig(BaseModel):
    """Connection settings shared by every consumer, producer and admin client of a process."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap: str = "127.0.0.1:9092"
    client_id: str = "streamquant"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_endpoint_identification_algorithm: Literal["https", "none"] | None = None
    # Anything else librdkafka understands, by its own dotted name (e.g. {"socket.keepalive.enable": "true"}).
    options: dict[str, str] = Field(default_factory=dict)

    def client_config(self) -> dict[str, str]:
        """The librdkafka configuration dict (secrets revealed: pass it to a client, never log it)."""
        conf: dict[str, str] = {"bootstrap.servers": self.bootstrap, "client.id": self.client_id,
                                "security.protocol": self.security_protocol}
        for field, key in (
            ("sasl_mechanism", "sasl.mechanism"),
            ("sasl_username", "sasl.username"),
            ("ssl_ca_location", "ssl.ca.location"),
            ("ssl_certificate_location", "ssl.certificate.location"),
            ("ssl_key_location", "ssl.key.location"),
            ("ssl_endpoint_identification_algorithm", "ssl.endpoint.identification.algorithm"),
        ):
            value = getattr(self, field)
            if value is not None:
                conf[key] = value
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(self.options)
        return conf

    def redacted(self) -> dict[str, str]:
        """The configuration as it may be shown or logged."""
        return {k: ("***" if "password" in k or "secret" in k else v) for k, v in self.client_config().items()}
