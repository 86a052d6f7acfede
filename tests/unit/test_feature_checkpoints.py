"""State checkpoints and replay in the feature processor (logic, with an in-memory log and sink standing in
for Kafka; the same on the real broker, with SIGKILLs: tests/integration/test_feature_processor.py).

However often partitions are checkpointed and wherever the processor dies — between batches or with a
transaction open — a successor restored from the changelog plus the ticks replayed from each partition's
checkpoint to its committed offset publishes exactly the rest of the bars and features: no gap, no duplicate,
the same numbers as one pass over the input."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

import processors.eos as eos
import processors.feature_processor as fp
from processors.feature_processor import FeatureProcessor, FeatureTopics
from processors.features import EngineConfig, FeatureEngine
from processors.synthetic import MarketSpec, TickGenerator
from schemas.tick_decoder import TickDecoder
from schemas.ticks import encode_columns
from streams.errors import TransactionAborted
from streams.source import MessageBatch

TOPICS = FeatureTopics("ticks", "bars", "features", "ticks.dlq", "ticks.late", "changelog")
PARTITIONS = 2
CONFIG = EngineConfig(intervals=("1s", "5s"))


class Broker:
    """What the processors see of Kafka: the input partitions, and what committed transactions wrote."""

    def __init__(self, values: dict[int, list[bytes]]) -> None:
        self.values = values
        self.committed: dict[int, int] = {}
        self.changelog: dict[int, dict[bytes, bytes | None]] = {p: {} for p in values}  # compacted
        self.outputs: dict[str, list[bytes]] = {"bars": [], "features": []}
        self.held = 0  # transactions with neither records nor offsets (a batch that held its offsets)
        self.aborts = 0
        # A live stream (the gathering cases): each partition's ticks arrive as the clock passes their ts.
        self.ts = {p: TickDecoder().decode(v).ticks.ts for p, v in values.items()}
        self.clock_ms = min(int(ts[0]) for ts in self.ts.values())


class Source:
    max_messages = 10_000

    def __init__(self, broker: Broker, on_assign: Callable[[list[tuple[str, int]]], None],
                 on_revoke: Callable[[list[tuple[str, int]]], None], rng: random.Random,
                 rebalances: bool = False) -> None:
        self.broker, self.on_assign, self.on_revoke, self.rng = broker, on_assign, on_revoke, rng
        self.position: dict[int, int] | None = None
        self.live = rebalances  # ticks come as a live stream's do, and an eager rebalance now and then comes
        self.rebalances = rebalances  # inside a consume() that gathers
        self.rebalanced = 0

    def next_batch(self, max_messages: int | None = None, max_wait_s: float | None = None,
                   eager: bool = False) -> MessageBatch:
        assigned = [("ticks", p) for p in self.broker.values]
        if self.position is not None and eager and self.rebalances and self.rng.random() < 0.1:
            self.on_revoke(assigned)  # all revoked and assigned again: reading resumes from the committed offsets
            self.position = None
            self.rebalanced += 1
        if self.position is None:  # the first consume() assigns, as in Kafka
            self.position = {p: max(self.broker.committed.get(p, 0), 0) for p in self.broker.values}
            self.on_assign(assigned)
        parts, offs, vals = [], [], []
        if self.live:  # the clock moves on; each partition delivers what is older than the clock less its lag
            self.broker.clock_ms += self.rng.choice([1, 2, 5, 20, 100])
        for p, pos in self.position.items():
            if self.live:
                due = self.broker.clock_ms - self.rng.choice([0, 3, 8, 15])
                take = int(np.searchsorted(self.broker.ts[p], due, side="right")) - pos
            else:
                take = self.rng.choice([0, 1, 7, 40, 300])
            for o in range(pos, min(pos + take, len(self.broker.values[p]))):
                parts.append(p)
                offs.append(o)
                vals.append(self.broker.values[p][o])
            self.position[p] = max(pos, min(pos + take, len(self.broker.values[p])))  # consume() moves it on
        return MessageBatch(topics=["ticks"] * len(vals), partitions=np.array(parts, np.int32),
                            offsets=np.array(offs, np.int64), values=vals, timestamps=np.zeros(len(vals), np.int64))

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        assert self.position is not None
        for (_t, p), o in offsets.items():
            self.position[p] = o

    def wait_for_stable_offsets(self, partitions: list[tuple[str, int]], _timeout: float) -> dict[Any, int]:
        return {(t, p): self.broker.committed.get(p, -1001) for t, p in partitions}

    def is_member(self) -> bool:
        return True

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def assignment(self) -> list[tuple[str, int]]:
        return [("ticks", p) for p in self.broker.values]

    def close(self) -> None:
        pass


class Sink:
    def __init__(self, broker: Broker, source: Callable[[], Source], rng: random.Random | None = None) -> None:
        self.broker, self.source, self.rng = broker, source, rng
        self.open: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    def begin(self) -> None:
        self.open = []

    def write(self, topic: str, key: bytes | None, value: bytes | None, headers: Any = None,
              partition: int | None = None) -> None:
        self.open.append((topic, key, value, partition))

    def write_many(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        for key, value in zip(keys, values, strict=True):
            self.write(topic, key, value)

    def write_dead_letters(self, letters: Any) -> None:
        for letter in letters:
            self.write(letter.topic, letter.key, letter.value)

    def commit(self, _source: Any, offsets: dict[tuple[str, int], int]) -> None:
        if (offsets or self.open) and self.rng is not None and self.rng.random() < 0.15:
            self.open = []  # the broker refused it (an abortable error): nothing of it is kept
            self.broker.aborts += 1
            raise TransactionAborted("injected")
        self.broker.held += not offsets and not self.open
        for topic, key, value, partition in self.open:
            if topic == "changelog":
                assert partition is not None and key is not None
                self.broker.changelog[partition][key] = value
            elif topic in self.broker.outputs:
                assert value is not None
                self.broker.outputs[topic].append(value)
        for (_t, p), o in offsets.items():
            assert o >= self.broker.committed.get(p, 0), "committed offsets never go back"
            self.broker.committed[p] = o
        self.open = []

    @property
    def wrote(self) -> bool:
        return bool(self.open)

    def abort(self) -> None:
        self.open = []

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def processor(broker: Broker, rng: random.Random, interval_s: float, replays: list[int],
              commit_interval_s: float = 0.0, aborts: bool = False, close_gather_s: float = 0.0) -> FeatureProcessor:
    holder: dict[str, Source] = {}

    def source_factory(on_assign: Any, on_revoke: Any) -> Source:
        holder["s"] = Source(broker, on_assign, on_revoke, rng, rebalances=close_gather_s > 0)
        return holder["s"]

    def replay(p: int, start: int, end: int) -> Iterator[list[bytes | None]]:
        replays.append(end - start)
        for lo in range(start, end, 50):
            yield list(broker.values[p][lo:min(lo + 50, end)])

    return FeatureProcessor(FeatureEngine(CONFIG), TOPICS, source_factory,  # type: ignore[arg-type]
                            lambda: Sink(broker, lambda: holder["s"], rng if aborts else None),  # type: ignore[arg-type, return-value]
                            lambda parts: {p: dict(broker.changelog[p]) for p in parts}, replay, namespace="g",
                            checkpoint_interval_s=interval_s, commit_interval_s=commit_interval_s,
                            close_gather_s=close_gather_s)


def stream(rate: int = 60) -> dict[int, list[bytes]]:
    # Sparse symbols (about two ticks a second each): bars are often closed by another symbol's tick. Denser
    # (rate 600): most batches close no bar.
    ticks = TickGenerator(MarketSpec(symbols=30, seed=5, rate=rate)).next_chunk(6_000)
    values = encode_columns(ticks)
    out: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for sym, value in zip(ticks.symbol(), values, strict=True):
        out[int(sym[1:]) % PARTITIONS].append(value)
    return out


def one_pass(values: dict[int, list[bytes]]) -> dict[tuple[str, str, int], Any]:
    engine = FeatureEngine(CONFIG)
    want: dict[tuple[str, str, int], Any] = {}
    for p in range(PARTITIONS):
        out, _ = engine.process(engine.empty_state(), TickDecoder().decode(values[p]).ticks)
        for c in out.closed:
            for i in range(len(c)):
                want[(str(c.symbol[i]), c.interval, int(c.start[i]))] = {n: c.features[n][i] for n in c.features}
    return want


@pytest.mark.parametrize(("interval_s", "commit_interval_s", "close_gather_s"),
                         [(0.0, 0.0, 0.0), (0.5, 0.0, 0.0), (5.0, 0.0, 0.0), (1e9, 0.0, 0.0), (0.5, 0.3, 0.0),
                          (5.0, 1.0, 0.0), (0.5, 0.3, 0.005), (0.0, 0.0, 0.005)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_anywhere_the_successor_publishes_exactly_the_rest(monkeypatch: pytest.MonkeyPatch, interval_s: float,
                                                                 commit_interval_s: float, close_gather_s: float,
                                                                 seed: int) -> None:
    clock = Clock()
    monkeypatch.setattr(fp, "time", SimpleNamespace(monotonic=clock.monotonic, time=lambda: 0.0, sleep=lambda s: None))
    monkeypatch.setattr(eos, "time", SimpleNamespace(monotonic=clock.monotonic, perf_counter=time.perf_counter,
                                                     sleep=lambda s: None))
    rng = random.Random(seed)
    values = stream(600 if commit_interval_s and not close_gather_s else 60)
    broker = Broker(values)
    replays: list[int] = []
    proc = processor(broker, rng, interval_s, replays, commit_interval_s, aborts=True, close_gather_s=close_gather_s)
    gathers = {o: REGISTRY.get_sample_value("streamquant_close_gathers_total", {"processor": "features", "outcome": o})
               or 0.0 for o in ("complete", "timed out", "rebalanced")}
    rebalanced = 0
    kills = 0
    while any(broker.committed.get(p, 0) < len(v) for p, v in values.items()):
        clock.now += rng.choice([0.0, 0.01, 0.05, 0.2])
        if rng.random() < 0.08:  # killed: between batches, or with its transaction open
            if rng.random() < 0.5:
                proc._process(proc.source.next_batch())
            rebalanced += proc.source.rebalanced  # type: ignore[attr-defined]
            proc = processor(broker, rng, interval_s, replays, commit_interval_s, aborts=True,
                             close_gather_s=close_gather_s)
            kills += 1
            continue
        if rng.random() < 0.03:
            proc._on_idle()
        else:
            proc.step()
    assert kills >= 3
    assert broker.aborts >= 1
    if close_gather_s:
        # Batches that closed bars on one partition took the other's closing ticks too; some met a rebalance.
        after = {o: REGISTRY.get_sample_value("streamquant_close_gathers_total", {"processor": "features",
                                                                                  "outcome": o}) or 0.0
                 for o in gathers}
        assert after["complete"] - gathers["complete"] >= 5, after
        assert rebalanced + proc.source.rebalanced >= 1  # type: ignore[attr-defined]
        assert after["rebalanced"] - gathers["rebalanced"] >= 1, after
    if commit_interval_s:
        assert broker.held >= 10, broker.held  # batches that closed no bar ended without reaching the broker
    if interval_s == 0:
        assert not replays  # every batch checkpoints what it touched: nothing to replay
    if interval_s >= 5:
        assert sum(replays) > 100
    got: dict[tuple[str, str, int], Any] = {}
    for raw in broker.outputs["features"]:
        f = orjson.loads(raw)
        key = (f["symbol"], f["interval"], f["ts"])
        assert key not in got, f"feature vector {key} published twice"
        got[key] = f["values"]
    want = one_pass(values)
    # The last bars stay open (nothing closes them); everything that closed was published once, exactly.
    assert got.keys() == want.keys()
    for key, row in want.items():
        for name, value in row.items():
            published = got[key][name]
            assert np.array_equal(np.float64(np.nan if published is None else published), value, equal_nan=True)


def test_a_changelog_without_committed_offsets_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets expired (offsets.retention.minutes) or deleted while the changelog lives on: where the published
    outputs end is unknown, so the restore refuses rather than re-read from auto.offset.reset."""
    monkeypatch.setattr(fp, "time", SimpleNamespace(monotonic=time.monotonic, time=lambda: 0.0, sleep=lambda s: None))
    values = stream()
    broker = Broker(values)
    proc = processor(broker, random.Random(1), 0.0, [])
    while sum(broker.committed.values()) < 1000:
        proc.step()
    assert any(broker.changelog.values())
    broker.committed = {}
    with pytest.raises(fp.ProcessorError, match=r"no committed offsets .* changelog holds their state"):
        processor(broker, random.Random(2), 0.0, []).step()
