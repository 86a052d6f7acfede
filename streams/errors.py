"""Errors of the Kafka layer, under one root so the CLI can turn them into one clear line."""

from __future__ import annotations


class StreamsError(Exception):
    """Root of every error raised by `streams`."""


class BrokerUnavailable(StreamsError):
    """The bootstrap servers did not answer in time."""


class TopicError(StreamsError):
    """A topic could not be created, or exists with settings that differ from the catalog."""


class KafkaClientError(StreamsError):
    """A non-retriable error reported by the Kafka client (authorization, fatal producer error, ...)."""


class TransactionAborted(StreamsError):
    """The current transaction had to be aborted: rewind to the committed offsets and process again."""


class ProducerFenced(StreamsError):
    """The transactional producer hit a fatal error: recreate it (and restore state) to go on."""


class ProducerStalled(ProducerFenced):
    """A transactional call outlived its timeout (a client bug after a broker restart): replace the producer."""


class DuplicateInstance(StreamsError):
    """Another live instance uses the same transactional id and fenced this one: stop, do not fight it."""


class NotAuthorized(StreamsError):
    """The broker refused an operation for this principal (no ACL grants it): retrying cannot help."""


class AuthenticationFailed(StreamsError):
    """The broker rejected the credentials (SASL) or the TLS handshake failed."""


# librdkafka's error codes for a missing ACL (by name: the numeric values differ between local and broker codes).
AUTHORIZATION_CODES = frozenset({"TOPIC_AUTHORIZATION_FAILED", "GROUP_AUTHORIZATION_FAILED",
                                 "CLUSTER_AUTHORIZATION_FAILED", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                                 "DELEGATION_TOKEN_AUTHORIZATION_FAILED"})


def is_authorization_error(name: str) -> bool:
    """Whether a KafkaError's `name()` says an ACL is missing."""
    return name in AUTHORIZATION_CODES
