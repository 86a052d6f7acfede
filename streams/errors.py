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


class DuplicateInstance(StreamsError):
    """Another live instance uses the same transactional id and fenced this one: stop, do not fight it."""
