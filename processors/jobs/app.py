"""The job control plane as a Faust app: commands in, job state in a changelog-backed table, statuses and
results out, in Faust's exactly-once mode.

Faust's exactly-once has a shape to respect: it keeps one transaction per (topic group, partition), and a
message goes into the transaction of its *destination* partition, committed together with the consumed
offsets of that same source partition. So every message the plane sends while handling a message of
partition p goes to partition p of a topic in the same group: the table's changelog, `jobs.status`, the
results topics, the dead letters and the plane's own event topic all have the command topic's partition count
and are subscribed by the agent (which skips the outputs it reads back), and a command is only accepted on the
partition Kafka's default partitioner (murmur2 of the job id) gives it. Then a message's table change, its
sends and its offset commit together or not at all, and a job ends exactly once.

One agent reads the command topic and the plane's own event topic. The scheduler reports what happens to a
job as events on that topic, written to the job's partition, so the record is only ever changed by the
agent of the partition that owns it. After a restart or a rebalance the table is recovered from its
changelog and a reconciler runs again every job that was queued or running.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
import msgspec
import orjson
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2
from confluent_kafka import Producer
from faust.types import TP
from prometheus_client import Counter

from processors.errors import ProcessorError
from processors.jobs import faust_driver, model
from processors.jobs.cache import ResultCache
from processors.jobs.kinds import KINDS, JobRejected
from processors.jobs.scheduler import Job, Scheduler
from schemas.codec import InvalidMessage, RecordCodec
from schemas.records import JOB_ID_PATTERN, CancelCommand
from streams.config import KafkaConfig
from streams.dlq import H_ERROR_CLASS, H_OFFSET, H_PARTITION, H_PROCESSOR, H_REASON, H_TIME, H_TOPIC
from streams.metrics import DEAD_LETTERS

log = logging.getLogger(__name__)
NAME = "jobs"
COALESCED = Counter("streamquant_jobs_coalesced_total", "Jobs that waited for an identical running job's result")
CANCEL_CODEC = RecordCodec(CancelCommand)
RESULT_TOPICS = {"backtest": "backtest.results", "features": "backtest.results", "train": "ml.results",
                 "promote": "ml.results", "rollback": "ml.results"}


@dataclass(frozen=True)
class PlaneTopics:
    commands: dict[str, str]  # command topic -> its dead-letter topic
    events: str
    status: str
    results: dict[str, str]   # kind -> topic


@dataclass(frozen=True)
class PlaneConfig:
    app_id: str
    kafka: KafkaConfig
    topics: PlaneTopics
    partitions: int
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    commit_interval_s: float = 0.5
    session_timeout_s: float = 10.0  # how long a dead instance's partitions wait before another takes them


class JobsTable(faust.Table):
    """Faust's table, with its changelog writes awaitable.

    Faust sends a table's changelog record through a buffer drained by a background task, and its
    exactly-once commit does not drain that buffer first: a record still buffered when the offsets of the
    message that changed it commit lands in the *next* transaction, which only commits when another message
    arrives, so a plane killed in between would restart with its offsets past the message and without the
    record it wrote (found by reading Faust's commit path; the restart defect measured in issue 4 was the
    recovery's end offsets, see `faust_driver`). `written()` waits until every changelog record written while
    handling the current message is in its transaction, before that message counts as processed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[Any] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self._unsent.append(fut)
        return fut

    async def written(self) -> None:
        futures, self._unsent = self._unsent, []
        for fut in futures:
            await fut


def _now_ms() -> int:
    return int(time.time() * 1000)


class JobPlane:
    """The agent's logic with its table, scheduler and cache (the Faust wiring is `build_app`)."""

    def __init__(self, config: PlaneConfig, table: Any, scheduler_factory: Any, cache: ResultCache,
                 out: dict[str, Any]) -> None:
        self.config = config
        self.table = table
        self.cache = cache
        self.out = out  # logical name -> faust topic
        self.scheduler: Scheduler = scheduler_factory(self._emit)
        self._events = Producer({**config.kafka.client_config(), "enable.idempotence": True, "linger.ms": 1})
        self._partition: dict[str, int] = {}
        self._emitted_end: set[str] = set()  # jobs whose worker ended here; their record is catching up
        self._inflight: dict[str, str] = {}  # cache key -> the queued or running job doing that work
        self._followers: dict[str, list[tuple[str, int]]] = {}  # that job -> jobs waiting for its result
        t = config.topics
        self._outputs = {t.status, *t.commands.values(), *t.results.values()}

    # ------------------------------------------------------------------ messages in

    async def handle(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                     headers: list[tuple[str, bytes]] | None) -> None:
        now = _now_ms()
        if topic in self._outputs:
            return  # our own output, read back only to share the transaction (see the module docstring)
        if topic == self.config.topics.events:
            event = orjson.loads(value or b"{}")
            job_id = event["job_id"]
            fx = model.on_event(self.table.get(job_id.encode()), event, now)
            await self._apply(job_id, fx, partition)
            return
        try:
            await self._command(partition, key, value, now)
        except _Unusable as err:
            await self._dead_letter(topic, partition, offset, key, value, headers, err.error_class, err.reason)

    async def _command(self, partition: int, key: bytes | None, value: bytes | None, now: int) -> None:
        if value is None:
            raise _Unusable("empty", "command has no value (tombstone)")
        try:
            obj = msgspec.json.decode(value)
        except msgspec.DecodeError as err:
            raise _Unusable("not_json", f"not valid JSON: {err}") from None
        job_id = obj.get("job_id") if isinstance(obj, dict) else None
        if not isinstance(job_id, str) or not _valid_job_id(job_id):
            raise _Unusable("missing_field", "command has no valid job_id: nobody could follow its status")
        kind_name = str(obj.get("type", "backtest"))
        if key is None or key.decode("utf-8", "replace") != job_id:
            raise _Unusable("wrong_key", f"the message key must be the job_id {job_id!r}")
        if partition_for(key, self.config.partitions) != partition:
            raise _Unusable("wrong_partition", f"job {job_id} arrived on partition {partition}, not on "
                            f"{partition_for(key, self.config.partitions)} where Kafka's default partitioner "
                            "(murmur2 of the key) puts it; librdkafka clients need partitioner=murmur2_random")
        existing = self.table.get(job_id.encode())
        if kind_name == "cancel":
            try:
                cancel = CANCEL_CODEC.decode_obj(obj)
            except InvalidMessage as err:
                raise _Unusable(err.error_class, err.reason) from None
            if existing is None:
                raise _Unusable("unknown_job", f"cancel for job {job_id!r}, which this plane has never seen")
            await self._apply(job_id, model.on_cancel(existing, job_id, now, cancel.reason), partition)
            return
        kind = KINDS.get(kind_name)
        reason: str | None = None
        if kind is None:
            reason = f"unknown command type {kind_name!r} (known: {', '.join(sorted(KINDS))}, cancel)"
        else:
            try:
                kind.validate(kind.codec.decode_obj(obj))
            except InvalidMessage as err:
                reason = err.reason
            except JobRejected as err:
                reason = str(err)
        if reason is not None:
            await self._apply(job_id, model.on_reject(existing, job_id, kind_name, obj, partition, now, reason),
                              partition)
            return
        cached, tier, leader = None, None, None
        work = model.cache_key(kind_name, obj)
        if existing is None and kind is not None and kind.cacheable:
            cached, tier = await self.cache.get(work)
            leader = self._inflight.get(work) if cached is None else None
        fx = model.on_submit(existing, job_id, kind_name, obj, partition, now, cached, tier, leader)
        if fx.record is not None and fx.record["state"] == "queued" and kind is not None and kind.cacheable:
            if leader is None:
                self._inflight[work] = job_id
            else:
                self._followers.setdefault(leader, []).append((job_id, partition))
                COALESCED.inc()
        await self._apply(job_id, fx, partition)

    # ------------------------------------------------------------------ effects out

    async def _apply(self, job_id: str, fx: model.Effects, partition: int) -> None:
        key = job_id.encode()
        record = fx.record
        if record is not None:
            self.table[key] = record
            if isinstance(self.table, JobsTable):
                await self.table.written()
            if record["state"] in model.TERMINAL:
                self._emitted_end.discard(job_id)
                self._release_followers(record)
        for s in fx.statuses:
            await self.out["status"].send(key=key, value=orjson.dumps(s), partition=partition)
        kind = (record or self.table.get(key) or {}).get("kind", "backtest")
        for r in fx.results:
            await self.out[f"results.{kind}"].send(key=key, value=orjson.dumps(r), partition=partition)
        for action, target in fx.actions:
            if action == "enqueue" and record is not None:
                self._enqueue(record, partition, record["attempt"])
            elif action == "cancel":
                self.scheduler.cancel(target)
        if fx.cache_put is not None and (k := KINDS.get(kind)) is not None and k.cacheable:
            await self.cache.put(*fx.cache_put)
        if fx.dead_letter is not None:
            log.warning("job %s: %s", job_id, fx.dead_letter)

    async def _dead_letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                           headers: list[tuple[str, bytes]] | None, error_class: str, reason: str) -> None:
        ours = [(H_ERROR_CLASS, error_class.encode()), (H_REASON, reason.encode()[:1024]),
                (H_TOPIC, topic.encode()), (H_PARTITION, str(partition).encode()), (H_OFFSET, str(offset).encode()),
                (H_PROCESSOR, NAME.encode()), (H_TIME, str(_now_ms()).encode())]
        dlq = self.out[f"dlq.{topic}"]
        await dlq.send(key=key, value=value, headers=[*(headers or []), *ours], partition=partition)
        # Counted when sent: Faust gives no hook at its commit, so a message re-read after an aborted
        # transaction (a crash between send and commit) is counted again.
        DEAD_LETTERS.labels(topic, error_class).inc()

    def _enqueue(self, record: model.Record, partition: int, attempt: int) -> None:
        cmd = record["command"]
        self._partition[record["job_id"]] = partition
        self.scheduler.submit(Job(record["job_id"], record["kind"], cmd, attempt, int(cmd.get("priority", 5)),
                                  float(cmd.get("timeout_s", 600.0)), str(cmd.get("backend", "auto"))))

    def _release_followers(self, record: model.Record) -> None:
        """A job that others with the same work wait for has ended: each gets its result (or runs itself)."""
        job_id = record["job_id"]
        if self._inflight.get(record["cache_key"]) == job_id:
            del self._inflight[record["cache_key"]]
        result = record.get("result") if record["state"] == "succeeded" else None
        for follower, partition in self._followers.pop(job_id, []):
            self._send_event(follower, partition, {"event": "shared", "leader": job_id, "result": result})

    def _send_event(self, job_id: str, partition: int, event: dict[str, Any]) -> None:
        payload = {**event, "job_id": job_id, "ts": _now_ms()}
        self._events.produce(self.config.topics.events, orjson.dumps(payload), key=job_id.encode(),
                             partition=partition)
        self._events.poll(0)

    def _emit(self, job: Job, event: dict[str, Any]) -> None:
        """Scheduler events go through Kafka to the job's partition (see the module docstring)."""
        if event["event"] in ("succeeded", "failed", "rejected", "timed_out"):
            self._emitted_end.add(job.job_id)
        self._send_event(job.job_id, self._partition.get(job.job_id, 0), {**event, "attempt": job.attempt})

    # ------------------------------------------------------------------ recovery

    def reconcile(self, assigned: set[int]) -> int:
        """Runs again every queued or running job of an owned partition that this process is not running."""
        self._events.poll(0)
        started = 0
        for record in list(self.table.values()):
            job_id = record["job_id"]
            waiting = record.get("follows") in self._followers
            if (record["partition"] in assigned and model.needs_running(record) and not waiting
                    and not self.scheduler.known(job_id) and job_id not in self._emitted_end):
                log.info("job %s was %s before a restart or rebalance: running it again", job_id, record["state"])
                self._enqueue(record, record["partition"], model.next_attempt(record))
                started += 1
        return started

    def revoked(self, partitions: set[int]) -> None:
        """Jobs of partitions another instance now owns stop here; it runs them again."""
        stopped = self.scheduler.cancel_where(lambda job: self._partition.get(job.job_id) in partitions)
        if stopped:
            log.info("partitions %s revoked: stopped jobs %s", sorted(partitions), stopped)

    def view(self, job_id: str) -> dict[str, Any] | None:
        record = self.table.get(job_id.encode())
        if record is None:
            return None
        return {k: v for k, v in record.items() if k not in ("result", "cache_key")}

    def close(self) -> None:
        self._events.flush(10)


class _Unusable(Exception):
    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner: murmur2 of the key (what aiokafka, Java and murmur2_random compute)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _valid_job_id(job_id: str) -> bool:
    return re.fullmatch(JOB_ID_PATTERN, job_id) is not None


def build_app(config: PlaneConfig, cache: ResultCache, scheduler_factory: Any) -> tuple[faust.App, JobPlane]:
    """The Faust app (exactly-once, in-memory table recovered from its changelog) and its plane."""
    kafka = config.kafka
    faust_dirs = Path(tempfile.gettempdir()) / "streamquant-faust"
    faust_dirs.mkdir(exist_ok=True)  # Faust makes the app's own folder, not its parents
    app = faust.App(
        config.app_id,
        broker=f"kafka://{kafka.bootstrap}",
        broker_credentials=_credentials(kafka),
        processing_guarantee="exactly_once",
        store="memory://",
        # Faust makes a data directory even for an in-memory store (default: `<app id>-data` in the working
        # directory); nothing in it outlives the process, so it goes under the temp dir.
        datadir=str(faust_dirs / "{conf.id}"),
        topic_partitions=config.partitions,
        broker_commit_interval=config.commit_interval_s,
        broker_session_timeout=config.session_timeout_s,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_host=config.web_host,
        web_port=config.web_port,
        web_in_thread=False,
        producer_max_request_size=4_000_000,
    )
    # Before anything asks for the default one: topics and agents reach the transport when declared.
    app.transport = faust_driver.Transport(app.conf.broker_consumer, app)
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    t = config.topics
    outputs = sorted({t.status, *t.commands.values(), *t.results.values()})
    source = app.topic(*t.commands, t.events, *outputs, **raw)
    out = {"status": app.topic(t.status, **raw)}
    for command_topic, dlq in t.commands.items():
        out[f"dlq.{command_topic}"] = app.topic(dlq, **raw)
    for kind, name in t.results.items():
        out[f"results.{kind}"] = app.topic(name, **raw)
    table = JobsTable(app, name="jobs", default=None, beacon=app.tables.beacon,
                      partitions=config.partitions, key_type=bytes)
    app.tables.add(table)
    plane = JobPlane(config, table, scheduler_factory, cache, out)

    @app.agent(source, name=f"{config.app_id}.jobs")
    async def process(stream: Any) -> None:
        async for event in stream.events():
            m = event.message
            await plane.handle(m.topic, m.partition, m.offset, m.key, m.value, list(m.headers or []))

    def owned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == t.events}

    @app.timer(interval=1.0)
    async def reconcile() -> None:
        # Only once the table is recovered: a record read before its newer one would run an ended job again.
        if not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        assigned = owned()
        if assigned:
            plane.reconcile(assigned)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(_app: Any, revoked: set[TP], **_: Any) -> None:
        plane.revoked({tp.partition for tp in revoked if tp.topic == t.events})

    @app.task
    async def start_scheduler() -> None:
        await plane.scheduler.start()

    @app.page("/jobs/{job_id}")
    async def job_view(web: Any, request: Any, job_id: str) -> Any:
        view = plane.view(job_id)
        if view is None:
            return web.json({"error": f"no job {job_id!r} in this instance's partitions"}, status=404)
        return web.json(view)

    @app.page("/jobs/{job_id}/result")
    async def job_result(web: Any, request: Any, job_id: str) -> Any:
        record = table.get(job_id.encode())
        if record is None:
            return web.json({"error": f"no job {job_id!r} in this instance's partitions"}, status=404)
        if record.get("result") is None:
            return web.json({"error": f"job {job_id} is {record['state']}", "state": record["state"]}, status=404)
        return web.json(record["result"])

    @app.page("/cache/stats")
    async def cache_stats(web: Any, request: Any) -> Any:
        return web.json({**cache.stats(), "scheduler": plane.scheduler.counts()})

    return app, plane


def _credentials(kafka: KafkaConfig) -> Any:
    """The plane's Kafka settings in Faust's terms (aiokafka underneath): TLS from the CA, certificate and key
    files, SASL from the mechanism, user and password; the same settings as every librdkafka client."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    ssl_context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        ssl_context = create_ssl_context(
            cafile=kafka.ssl_ca_location, certfile=kafka.ssl_certificate_location, keyfile=kafka.ssl_key_location,
            password=kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None)
        if kafka.ssl_endpoint_identification_algorithm == "none":
            ssl_context.check_hostname = False
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(ssl_context)
    if kafka.sasl_mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        raise ProcessorError(f"the job plane supports SASL mechanisms PLAIN and SCRAM-SHA-256/512, not "
                             f"{kafka.sasl_mechanism}")
    return faust.SASLCredentials(username=kafka.sasl_username,
                                 password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
                                 mechanism=kafka.sasl_mechanism, ssl_context=ssl_context)
