"""Peer run, in the Quix Streams venv: the same 1 s and 1 m bars and 14 indicators as `run features`,
built the way a Quix Streams user would (tumbling windows on the tick's own timestamp, then a stateful
per-symbol apply), exactly-once, over the same preloaded ticks.

Usage: python bench/peer_quix_features.py BROKER TICKS_TOPIC OUT_PREFIX TOTAL -> one JSON line.
Standalone (no StreamQuant import): Quix pins older confluent-kafka and pydantic than StreamQuant's lock.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application

N_SMA, N_EMA_F, N_EMA_S, N_RSI, N_ATR, N_BB, N_VOL, SIG = 20, 12, 26, 14, 14, 20, 20, 9


def new_state() -> dict[str, Any]:
    return {"c": 0, "closes": [], "ema12": 0.0, "ema26": 0.0, "mf": 0.0, "ms": 0.0, "sig": 0.0, "prev": None,
            "gain": 0.0, "loss": 0.0, "tr": 0.0, "obv": 0.0, "lrs": []}


def ema_step(prev: float, x: float, n: int, c: int) -> float:
    if c < n - 1:
        return prev + x
    if c == n - 1:
        return (prev + x) / n
    return (x - prev) * (2.0 / (n + 1)) + prev


def indicators(bar: dict[str, Any], s: dict[str, Any]) -> dict[str, float | None]:
    """The same definitions as StreamQuant's kernels, one bar at a time in plain Python."""
    c, x, out = s["c"], bar["close"], {}
    s["closes"] = (s["closes"] + [x])[-26:]
    w = s["closes"][-N_SMA:]
    out["sma_20"] = sum(w) / N_SMA if c >= N_SMA - 1 else None
    s["ema12"] = ema_step(s["ema12"], x, N_EMA_F, c)
    s["ema26"] = ema_step(s["ema26"], x, N_EMA_S, c)
    out["ema_12"] = s["ema12"] if c >= N_EMA_F - 1 else None
    out["ema_26"] = s["ema26"] if c >= N_EMA_S - 1 else None
    # MACD: the fast EMA seeded over the 12 bars ending with the slow one's seed.
    if c >= N_EMA_S - N_EMA_F:
        s["mf"] = ema_step(s["mf"], x, N_EMA_F, c - (N_EMA_S - N_EMA_F))
    s["ms"] = s["ema26"]
    macd = sig = None
    if c >= N_EMA_S - 1:
        m, j = s["mf"] - s["ms"], c - (N_EMA_S - 1)
        s["sig"] = ema_step(s["sig"], m, SIG, j)
        if j >= SIG - 1:
            macd, sig = m, s["sig"]
    out["macd_12_26_9"], out["macd_signal_12_26_9"] = macd, sig
    out["macd_hist_12_26_9"] = None if macd is None or sig is None else macd - sig
    if c >= N_BB - 1:
        mean = sum(w) / N_BB
        sd = math.sqrt(sum((v - mean) ** 2 for v in w) / N_BB)
        out["bb_upper_20_2"], out["bb_middle_20_2"], out["bb_lower_20_2"] = mean + 2 * sd, mean, mean - 2 * sd
    else:
        out["bb_upper_20_2"] = out["bb_middle_20_2"] = out["bb_lower_20_2"] = None
    prev = s["prev"]
    out["rsi_14"] = out["atr_14"] = out["logret_1"] = out["vol_20"] = None
    if prev is None:
        s["obv"] = bar["volume"]
    else:
        d = x - prev
        if c > N_RSI:
            s["gain"] *= N_RSI - 1
            s["loss"] *= N_RSI - 1
        s["gain"] += max(d, 0.0)
        s["loss"] += max(-d, 0.0)
        if c >= N_RSI:
            s["gain"] /= N_RSI
            s["loss"] /= N_RSI
            t = s["gain"] + s["loss"]
            out["rsi_14"] = 0.0 if abs(t) < 1e-14 else 100.0 * s["gain"] / t
        tr = max(bar["high"] - bar["low"], abs(prev - bar["high"]), abs(prev - bar["low"]))
        if c <= N_ATR:
            s["tr"] += tr
            if c == N_ATR:
                s["tr"] /= N_ATR
                out["atr_14"] = s["tr"]
        else:
            s["tr"] = (s["tr"] * (N_ATR - 1) + tr) / N_ATR
            out["atr_14"] = s["tr"]
        s["obv"] += bar["volume"] if x > prev else (-bar["volume"] if x < prev else 0.0)
        lr = math.log(x / prev)
        out["logret_1"] = lr
        s["lrs"] = (s["lrs"] + [lr])[-N_VOL:]
        if len(s["lrs"]) == N_VOL:
            m1 = sum(s["lrs"]) / N_VOL
            out["vol_20"] = math.sqrt(sum((v - m1) ** 2 for v in s["lrs"]) / N_VOL)
    out["obv"] = s["obv"]
    s["prev"], s["c"] = x, c + 1
    return out


def bar_init(tick: dict[str, Any]) -> dict[str, Any]:
    p, q = tick["price"], tick["size"]
    return {"open": p, "high": p, "low": p, "close": p, "volume": q, "pv": p * q, "trades": 1}


def bar_add(bar: dict[str, Any], tick: dict[str, Any]) -> dict[str, Any]:
    p, q = tick["price"], tick["size"]
    bar["high"], bar["low"], bar["close"] = max(bar["high"], p), min(bar["low"], p), p
    bar["volume"] += q
    bar["pv"] += p * q
    bar["trades"] += 1
    return bar


def main() -> None:
    broker, ticks_topic, prefix, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    group = f"{prefix}quix"
    app = Application(broker_address=broker, consumer_group=group, auto_offset_reset="earliest",
                      processing_guarantee="exactly-once", state_dir=tempfile.mkdtemp(), loglevel="WARNING",
                      commit_interval=1.0)
    ticks = app.topic(ticks_topic, value_deserializer="json",
                      timestamp_extractor=lambda value, _headers, _ts, _type: value["ts"])
    bars_topic = app.topic(f"{prefix}quix-bars", value_serializer="json")
    features_topic = app.topic(f"{prefix}quix-features", value_serializer="json")
    sdf = app.dataframe(ticks)
    for name, ms in (("1s", 1000), ("1m", 60_000)):
        bars = sdf.tumbling_window(ms, name=f"bars_{name}").reduce(bar_add, bar_init).final()
        bars = bars.apply(lambda w, iv=name: {"interval": iv, "ts": w["start"], **w["value"]})
        bars.to_topic(bars_topic)

        def with_features(bar: dict[str, Any], state: Any) -> dict[str, Any]:
            s = state.get("ind", None) or new_state()
            values = indicators(bar, s)
            state.set("ind", s)
            return {"interval": bar["interval"], "ts": bar["ts"], "values": values}

        bars.apply(with_features, stateful=True).to_topic(features_topic)

    def stop_when_done() -> None:
        c = Consumer({"bootstrap.servers": broker, "group.id": group})
        partitions = list(c.list_topics(ticks_topic, timeout=10).topics[ticks_topic].partitions)
        while True:
            time.sleep(0.5)
            tps = c.committed([TopicPartition(ticks_topic, p) for p in partitions], timeout=10)
            if sum(max(tp.offset, 0) for tp in tps) >= total:
                app.stop()
                return

    threading.Thread(target=stop_when_done, daemon=True).start()
    started = time.perf_counter()
    app.run()
    seconds = time.perf_counter() - started
    print(json.dumps({"name": f"Quix Streams {version('quixstreams')}, exactly-once", "seconds": seconds,
                      "ticks_per_s": total / seconds}))


if __name__ == "__main__":
    main()
