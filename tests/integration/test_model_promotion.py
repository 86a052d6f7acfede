"""Promote and rollback as job commands, and a tampered new version, on the real broker and Redis.

Versions are registered with the plane's own training runner in this process (the train → register path through
the plane is in test_models.py), so these tests spend their time on what they are about: promote and rollback
commands on `ml.commands` move the active version on `models` and report on `jobs.status` and `ml.results`, and
user errors are `rejected` with the reason; a predictor serving v1 refuses a promoted v2 whose artifact was
changed after registration, keeps serving v1 (also after a restart), never scores with v2, and says why in its
log and metrics.
"""

from __future__ import annotations

import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis

from processors.jobs.kinds import JobContext, run_job
from processors.online_store import OnlineStore
from processors.registry import Registry, load_scorer, publish, read_registry
from streams.config import KafkaConfig
from tests.integration.test_jobs_plane import TERMINAL, Statuses, read_results, send, start_plane, stop
from tests.integration.test_models import (
    FEATURES,
    SEED,
    count_predictions,
    free_port,
    predictor,
    produce,
    read_all,
    sq,
    train_command,
    vectors,
)
from tests.integration.test_models import _stop_processes as _stop_processes  # fixtures of the same name
from tests.integration.test_models import ml_env as ml_env


def register(kafka: KafkaConfig, env: dict[str, str], prefix: str, n: int) -> Registry:
    """Versions 1..n of model `dir`, trained and registered by the plane's train runner (here, on the CPU)."""
    context = JobContext(env["STREAMQUANT_JOBS_ARTIFACT_ROOT"], kafka, models_topic=f"{prefix}models")
    for v in range(1, n + 1):
        result, _, _ = run_job("train", train_command(f"train-{v}", SEED + v), "cpu", context, lambda _p: None)
        assert result["version"] == v
    return read_registry(kafka, f"{prefix}models")


def aliases(registry: Registry) -> dict[int, tuple[str, ...]]:
    return {v: r.aliases for v, r in sorted(registry.versions["dir"].items())}


def test_promote_and_rollback_commands_move_the_active_version(kafka: KafkaConfig, ml_env: Any,
                                                               tmp_path: Path) -> None:
    prefix, env = ml_env
    register(kafka, env, prefix, 2)
    log = tmp_path / "plane.log"
    plane = start_plane(env, log)
    statuses = Statuses(kafka, f"{prefix}jobs.status")
    commands = f"{prefix}ml.commands"
    try:
        # Each step changes the registry, so each waits for the one before it.
        steps: list[tuple[str, dict[str, Any], int]] = [("promote-1", {"type": "promote", "version": 1}, 1),
                                                        ("promote-2", {"type": "promote", "version": 2}, 2),
                                                        ("rollback-1", {"type": "rollback"}, 1)]
        for job_id, cmd, active in steps:
            send(kafka, commands, [{"job_id": job_id, "model": "dir", **cmd}])
            statuses.wait([job_id], lambda s: s["state"] in TERMINAL, 60, plane, log)
            last = statuses.last(job_id)
            assert last is not None and (last["state"], last["kind"]) == ("succeeded", cmd["type"]), last
            assert read_registry(kafka, f"{prefix}models").get("dir").version == active
        assert aliases(read_registry(kafka, f"{prefix}models")) == {1: ("active",), 2: ()}

        # User errors, sent together (none of them changes the registry): each is rejected with its reason.
        bad: dict[str, tuple[dict[str, Any], str]] = {
            "no-such-version": ({"type": "promote", "model": "dir", "version": 9}, "model 'dir' has no version 9"),
            "no-such-model": ({"type": "promote", "model": "nope", "version": 1}, "model 'nope' has no version 1"),
            "no-version": ({"type": "promote", "model": "dir"}, "promote needs the version to make active"),
            "nothing-to-roll-back": ({"type": "rollback", "model": "dir"},
                                     "model 'dir' v1 has no earlier active version to go back to")}
        v2 = read_registry(kafka, f"{prefix}models").get("dir", 2)
        with open(v2.artifact, "ab") as f:  # v2 changed after it was registered: no predictor would serve it
            f.write(b"\0")
        bad["tampered"] = ({"type": "promote", "model": "dir", "version": 2},
                           f"model dir v2: forest artifact {v2.artifact}: sha256 is ")
        send(kafka, commands, [{"job_id": j, **cmd} for j, (cmd, _) in bad.items()])
        send(kafka, commands, [{"job_id": "promote-2", "model": "dir", "type": "promote", "version": 2}])  # again
        statuses.wait(list(bad), lambda s: s["state"] in TERMINAL, 60, plane, log)
        for job_id, (_, reason) in bad.items():
            last = statuses.last(job_id)
            assert last is not None and last["state"] == "rejected" and last["reason"].startswith(reason), last
        statuses.wait(["promote-2"], lambda s: "already used" in (s.get("reason") or ""), 30, plane, log)
        assert read_registry(kafka, f"{prefix}models").get("dir").version == 1  # the repeat did not promote again

        results = read_results(kafka, f"{prefix}ml.results")
        assert {j: [(r["active_version"], r.get("previous_version")) for r in rs] for j, rs in results.items()} \
            == {"promote-1": [(1, None)], "promote-2": [(2, 1), (2, 1)], "rollback-1": [(1, 2)]}  # repeat: re-sent
        for job_id in ("promote-1", "promote-2", "rollback-1"):
            assert statuses.terminal_count(job_id) == 1
        assert plane.poll() is None and "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        stop(plane)
        statuses.consumer.close()


def metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="dir"}} '):
            return float(line.split()[-1])
    return None


def wait_for(condition: Any, proc: Any, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.poll() is None, f"the predictor exited ({proc.returncode}): {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def test_tampered_new_version_is_refused_and_the_old_one_keeps_serving(kafka: KafkaConfig, ml_env: Any,
                                                                       tmp_path: Path, redis_url: str) -> None:
    prefix, env = ml_env
    registry = register(kafka, env, prefix, 2)
    models, predictions = f"{prefix}models", f"{prefix}predictions"
    publish(kafka, models, registry.promote("dir", 1))
    v1 = load_scorer(registry.get("dir", 1))
    artifact = Path(registry.get("dir", 2).artifact)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte after registration: the sha256 no longer matches
    artifact.write_bytes(bytes(data))

    items = vectors()
    complete = {(v["symbol"], v["ts"]): v for v in items if all(x is not None for x in v["values"].values())}
    half, three_quarters = len(items) // 2, len(items) * 3 // 4
    produce(kafka, f"{prefix}features", items[:half])
    port = free_port()
    log = tmp_path / "predictor.log"
    first = predictor({**env, "STREAMQUANT_METRICS_PORT": str(port)}, log)
    wait_for(lambda: count_predictions(kafka, predictions) >= 200, first, log)

    publish(kafka, models, read_registry(kafka, models).promote("dir", 2))  # what `models promote dir 2` writes
    wait_for(lambda: "refused" in log.read_text(), first, log)
    refusal = next(line for line in log.read_text().splitlines() if "refused" in line)
    assert "ERROR" in refusal and "dir v2 refused" in refusal and "sha256" in refusal and "still serving v1" in refusal
    assert metric(port, "streamquant_model_refusals_total") == 1.0
    assert metric(port, "streamquant_model_active_version") == 1.0
    produce(kafka, f"{prefix}features", items[half:three_quarters])
    so_far = sum(1 for v in items[:three_quarters] if (v["symbol"], v["ts"]) in complete)
    wait_for(lambda: count_predictions(kafka, predictions) == so_far, first, log)

    # Request-reply Predict for the active version does not use the tampered model either: it answers the reason.
    last = {v["symbol"]: v for v in items[:three_quarters] if (v["symbol"], v["ts"]) in complete}
    OnlineStore(redis.Redis.from_url(redis_url), namespace=prefix).put_many(
        {(s, "1d"): (v["ts"], v["values"]) for s, v in last.items()})
    answer = sq(env, "predict", *list(last)[:2], "--timeout", "30")
    assert answer.returncode == 1 and "dir v2" in answer.stderr and "sha256" in answer.stderr, answer

    # Restarted while v2 is the active version (a rolling restart; a SIGKILL's restart would only wait out the
    # group's session timeout here, and test_models.py kills one): it comes back serving v1 instead of exiting.
    first.send_signal(signal.SIGTERM)
    assert first.wait(60) == 0, log.read_text()[-3000:]
    produce(kafka, f"{prefix}features", items[three_quarters:])
    second = predictor(env, log, idle=5)
    second.wait(120)
    text = log.read_text()
    assert second.returncode == 0, text[-3000:]
    assert text.count("refused") == 2 and "serving v1, the version active before it" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]

    out = [orjson.loads(m.value()) for m in read_all(kafka, predictions)]
    got = Counter((p["symbol"], p["ts"]) for p in out)
    assert set(got) == set(complete) and max(got.values()) == 1  # none lost, none twice
    assert {p["version"] for p in out} == {1}  # the tampered model made no prediction
    want = v1.predict_up(np.array([[complete[(p["symbol"], p["ts"])]["values"][n] for n in FEATURES] for p in out]))
    assert np.abs(np.array([p["probability"] for p in out]) - want).max() <= 1e-12
