"""The transactional sink: a micro-batch's outputs, dead letters, changelog records and input offsets in one
Kafka transaction, so readers with `read_committed` see all of a batch or none of it.

Error handling follows the Kafka client's classification: retriable errors are retried here; errors
that require an abort raise `TransactionAborted` (after aborting), so the processor rewinds to its last
committed offsets and reprocesses; fatal errors (a newer instance with the same transactional id fenced
this one) raise `ProducerFenced`, and the processor recreates the sink and restores its state.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.config import KafkaConfig
from streams.dlq import H_ERROR_CLASS, DeadLetter
from streams.errors import (
    AUTHORIZATION_CODES,
    DuplicateInstance,
    KafkaClientError,
    NotAuthorized,
    ProducerFenced,
    ProducerStalled,
    TransactionAborted,
    is_authorization_error,
)
from streams.metrics import DEAD_LETTERS, MESSAGES_PRODUCED
from streams.source import BatchSource, Headers

log = logging.getLogger(__name__)
STALL_MARGIN_S = 10.0  # past a call's own timeout before its producer counts as stalled
T = TypeVar("T")


def _run_calls(calls: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], threading.Event] | None]) -> None:
    """A sink's worker thread: runs each call, hands back its value or error, until told to stop (None)."""
    while (item := calls.get()) is not None:
        fn, box, done = item
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller as it is
            box["error"] = err
        finally:
            done.set()


class _ClientLog(logging.Logger):
    """librdkafka's log lines for one producer, into Python logging ("librdkafka" logger), remembering the
    ones that report a refused authorization: a transaction failed in the background by the ACLs can reach
    the caller later as another error (a fatal INVALID_TXN_STATE from EndTxn was seen in CI), and these lines
    are then the only place that names the cause. librdkafka hands them over when the producer is polled."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.parent = logging.getLogger("librdkafka")
        self.denied: list[str] = []

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        text = str(msg) % args if args else str(msg)
        if "authorization failed" in text.lower() and len(self.denied) < 10:
            self.denied.append(text)
        super().log(level, msg, *args, **kwargs)


class TransactionalSink:
    """One transactional producer; `begin` … `write`* … `commit(source, offsets)` per micro-batch."""

    def __init__(self, config: KafkaConfig, transactional_id: str, *, timeout_s: float = 30.0,
                 transaction_timeout_ms: int = 60_000, extra: dict[str, Any] | None = None) -> None:
        self.transactional_id = transactional_id
        self._timeout_s = timeout_s
        self._failed: list[str] = []
        conf: dict[str, Any] = {
            **config.client_config(),
            "transactional.id": transactional_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "transaction.timeout.ms": transaction_timeout_ms,
            # Back-to-back transactions meet CONCURRENT_TRANSACTIONS while the coordinator finishes the
            # previous commit; with the default 100 ms backoff every send_offsets_to_transaction waited
            # ~100 ms here. A short first backoff (growing to 100 ms) makes it ~3 ms (measured).
            "retry.backoff.ms": 2,
            "retry.backoff.max.ms": 100,
            # Only failed deliveries call back into Python (a callback per message showed in profiles); a
            # failure also fails commit_transaction, the callback only records which topic and why.
            "delivery.report.only.error": True,
            "on_delivery": self._delivered,
            **(extra or {}),
        }
        self._log = _ClientLog(f"librdkafka.{transactional_id}")
        self._producer = Producer({**conf, "logger": self._log})
        self._stalled = False
        # One long-lived thread runs the transactional calls that talk to the broker; the caller waits on each
        # with a deadline (see `_bounded`). A new thread per call showed as ~4 % of the processor's samples
        # at 10k ticks/s (py-spy); the hand-off to a waiting thread costs ~70 us against ~90 us for a start.
        self._worker: queue.SimpleQueue[tuple[Callable[[], Any], dict[str, Any], threading.Event] | None] = \
            queue.SimpleQueue()
        threading.Thread(target=_run_calls, args=(self._worker,), name=f"txn-{transactional_id}", daemon=True).start()
        self._transaction_timeout_ms = transaction_timeout_ms
        self._began = time.monotonic()
        # Fences any earlier producer with this id and aborts the transaction it left open.
        self._call(lambda: self._producer.init_transactions(self._timeout_s), "init_transactions")
        self._open = False  # a batch's transaction is open (begin() .. commit()/abort())
        self._client_open = False  # ... and begun in the client (with its first record or offsets)
        self._written: dict[str, int] = {}
        self._dead: dict[tuple[str, str], int] = {}

    def begin(self) -> None:
        """Opens a batch's transaction. The client's transaction begins with the first record or offsets
        (`_begin_client`): a batch that writes neither never touches the client (see `commit`)."""
        self._began = time.monotonic()
        self._open = True
        self._client_open = False
        self._written = {}
        self._dead = {}

    def _begin_client(self) -> None:
        if not self._client_open:
            # Local (no request to the broker): run here, without the worker's hand-off.
            self._call(self._producer.begin_transaction, "begin_transaction", local=True)
            self._client_open = True

    def write(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None,
              partition: int | None = None) -> None:
        self._begin_client()
        self._produce(topic, key, value, headers, partition)
        self._written[topic] = self._written.get(topic, 0) + 1

    def write_many(self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes]) -> None:
        """Records of one topic, partitioned by key (a closing batch's ~1,000 bars and vectors)."""
        if not values:
            return
        self._begin_client()
        for key, value in zip(keys, values, strict=True):
            self._produce(topic, key, value)
        self._written[topic] = self._written.get(topic, 0) + len(values)

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None,
                 partition: int | None = None) -> None:
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, value, key, headers=cast(Any, headers))
                else:
                    self._producer.produce(topic, value, key, partition, headers=cast(Any, headers))
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as err:
                self._raise(err.args[0], f"produce to {topic}")

    def write_dead_letters(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self.write(letter.topic, letter.key, letter.value, letter.headers)
            error_class = (next((v for k, v in letter.headers if k == H_ERROR_CLASS), b"") or b"").decode()
            key = (letter.topic.removesuffix(".dlq"), error_class)
            self._dead[key] = self._dead.get(key, 0) + 1  # counted when committed: an aborted batch is re-read

    @property
    def wrote(self) -> bool:
        """Whether the open transaction holds any record."""
        return bool(self._written)

    def commit(self, source: BatchSource, offsets: dict[tuple[str, int], int]) -> None:
        """Adds the input offsets to the transaction and commits it. A transaction with neither records nor
        offsets was never begun in the client and ends here, with no call into it and no request to the
        broker (the two local calls it saves, timed with a throwaway wrapper during `bench.features_latency`:
        0.1 ms each at the median, a begin 0.4 ms on average and up to 15 ms when librdkafka's thread was busy)."""
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        if tps:
            self._begin_client()
            self._call(lambda: self._producer.send_offsets_to_transaction(tps, source.group_metadata(),
                                                                          self._timeout_s),
                       "send_offsets_to_transaction")
        if self._client_open:
            self._call(lambda: self._producer.commit_transaction(self._timeout_s), "commit_transaction")
            self._client_open = False
        self._open = False
        if self._failed:  # cannot happen after a successful commit, but never let it pass silently
            failed, self._failed = self._failed, []
            raise KafkaClientError(f"{len(failed)} messages failed in a committed transaction: {failed[0]}")
        for topic, count in self._written.items():
            MESSAGES_PRODUCED.labels(topic).inc(count)
        for (origin, error_class), count in self._dead.items():
            DEAD_LETTERS.labels(origin, error_class).inc(count)

    def abort(self) -> None:
        """Aborts the open transaction (retrying retriable errors); it stays open if the abort fails."""
        if not self._open:
            return
        if self._client_open:
            self._call(lambda: self._producer.abort_transaction(self._timeout_s), "abort_transaction",
                       aborting=True)
            self._client_open = False
        self._open = False
        self._failed = []

    def close(self) -> None:
        if self._stalled:  # a call still blocks inside it: touching it again would block too
            log.warning("abandoning the stalled producer %s (its successor fences it)", self.transactional_id)
            return
        if self._open:
            # Closing after a failure: whatever was open is abandoned (the broker aborts it on timeout).
            with contextlib.suppress(ProducerFenced, KafkaException):
                self.abort()
        # A producer in a fatal state can refuse even this; what it held belonged to a transaction that is gone.
        with contextlib.suppress(KafkaException):
            self._producer.flush(self._timeout_s)
        self._worker.put(None)  # the worker thread ends (a stalled one stays blocked: it is a daemon)

    # -- internals

    def _call(self, fn: Callable[[], T], what: str, aborting: bool = False, local: bool = False) -> T:
        deadline = time.monotonic() + self._timeout_s * 2
        while True:
            try:
                return fn() if local else self._bounded(fn, what)
            except KafkaException as err:
                kerr: KafkaError = err.args[0]
                if kerr.retriable() and time.monotonic() < deadline:
                    log.warning("%s: %s (retrying)", what, kerr.str())
                    time.sleep(0.1)
                    continue
                if aborting:  # an abort that fails is fatal or final: never abort again from here
                    self._raise_fatal(kerr, what)
                    raise KafkaClientError(f"{what}: {kerr.str()}") from None
                self._raise(kerr, what)

    def _bounded(self, fn: Callable[[], T], what: str) -> T:
        """Runs a transactional call, giving up on it when it outlives its own timeout.

        librdkafka's coordinator requests can ignore their timeout: after a broker restart,
        send_offsets_to_transaction was measured blocking for minutes (librdkafka issues #5456 and #5511).
        The call runs on this sink's worker thread; past the timeout and a margin the producer is declared
        stalled and abandoned (ProducerStalled): the processor makes a new one, whose init_transactions
        fences this one and aborts its transaction, and restores its state from committed data."""
        box: dict[str, Any] = {}
        done = threading.Event()
        self._worker.put((fn, box, done))
        if not done.wait(self._timeout_s + STALL_MARGIN_S):
            self._stalled = True
            raise ProducerStalled(f"{what} for {self.transactional_id} did not return within "
                                  f"{self._timeout_s + STALL_MARGIN_S:.0f}s: replacing the producer")
        if "error" in box:
            raise box["error"]
        return cast(T, box["value"])

    def _raise(self, kerr: KafkaError, what: str) -> Any:
        kerr = self._background_error(kerr)
        self._raise_fatal(kerr, what)
        # Once a transaction needs aborting, librdkafka refuses further produce() calls with _STATE.
        if kerr.txn_requires_abort() or (self._open and kerr.code() == KafkaError._STATE):
            self.abort()  # may itself raise (fatal): that error wins
            raise TransactionAborted(f"{what}: {kerr.str()}")
        raise KafkaClientError(f"{what}: {kerr.str()}")

    def _background_error(self, kerr: KafkaError) -> KafkaError:
        """The error that failed the transaction in the background, where a call racing it saw only _STATE.

        librdkafka fails a transaction asynchronously (an AddPartitionsToTxn refused by the ACLs, say); a
        send_offsets_to_transaction already under way then fails with "Erroneous state", not with the cause
        (measured: a principal without WRITE on its outputs got _STATE in one CI run, the ACL error in others).
        In a failed state begin_transaction() returns the state's own error and changes nothing."""
        if kerr.code() != KafkaError._STATE or not self._open:
            return kerr
        try:
            self._producer.begin_transaction()
        except KafkaException as err:
            cause: KafkaError = err.args[0]
            return kerr if cause.code() == KafkaError._STATE else cause
        self._client_open = True  # the producer had no transaction open: it has one now, which abort() ends
        return kerr

    def _raise_fatal(self, kerr: KafkaError, what: str) -> None:
        with contextlib.suppress(KafkaException):
            self._producer.poll(0)  # serves pending delivery reports and log lines (see _ClientLog)
        denied = [f for f in self._failed if any(code in f for code in AUTHORIZATION_CODES)] + self._log.denied
        if is_authorization_error(kerr.name()) or denied:
            detail = denied[0] if denied else kerr.str()
            writing = f" (writing {', '.join(sorted(self._written))})" if self._written else ""
            raise NotAuthorized(f"{what} as {self.transactional_id}{writing} was refused by the broker's ACLs "
                                f"({detail}): this principal needs WRITE on its output topics and on its "
                                "transactional id")
        if kerr.code() in (KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                           KafkaError._FENCED):
            open_s = time.monotonic() - self._began
            if self._open and open_s * 1000 >= self._transaction_timeout_ms:
                # Our own transaction outlived transaction.timeout.ms (the broker was away, say): the
                # coordinator aborted it and bumped the epoch. Not another instance: start over.
                raise ProducerFenced(f"{what} for {self.transactional_id}: the transaction was open {open_s:.0f}s, "
                                     f"past transaction.timeout.ms, and the broker aborted it ({kerr.str()})")
            raise DuplicateInstance(
                f"transactional id {self.transactional_id} was fenced ({kerr.str()}): another instance uses it "
                "(give every instance its own features.instance_id), or a batch outlived transaction.timeout.ms")
        if kerr.fatal():
            raise ProducerFenced(f"{what} for {self.transactional_id}: {kerr.str()}")

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(f"{msg.topic()}: {err.name()}: {err.str()}")
