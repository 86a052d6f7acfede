"""The job state machine: a job ends exactly once, repeats never rerun, stale events change nothing."""

from __future__ import annotations

from processors.jobs import model

CMD = {"job_id": "j1", "type": "backtest", "strategy": "trend_following", "universe": ["A"], "priority": 5,
       "start": "2024-01-01", "end": "2024-06-01", "data": {"source": "synthetic", "seed": 1}}


def submitted() -> model.Record:
    fx = model.on_submit(None, "j1", "backtest", CMD, 2, 1000)
    assert fx.record is not None
    assert [s["state"] for s in fx.statuses] == ["queued"]
    assert fx.actions == [("enqueue", "j1")]
    return fx.record


def test_lifecycle_queued_running_succeeded_sends_the_result_once() -> None:
    rec = submitted()
    fx = model.on_event(rec, {"event": "started", "attempt": 1, "backend": "cpu"}, 2000)
    assert fx.record is not None and fx.record["state"] == "running" and fx.statuses[0]["backend"] == "cpu"
    rec = fx.record
    fx = model.on_event(rec, {"event": "progress", "attempt": 1, "progress": 0.5}, 2500)
    assert fx.record is not None and fx.statuses[0]["progress"] == 0.5
    rec = fx.record
    fx = model.on_event(rec, {"event": "succeeded", "attempt": 1, "result": {"job_id": "x", "results": []},
                              "backend": "cpu"}, 3000)
    assert fx.record is not None and fx.record["state"] == "succeeded"
    assert fx.results == [{"job_id": "j1", "results": []}]
    assert fx.cache_put is not None and fx.cache_put[0] == rec["cache_key"]
    done = fx.record
    # A second end (a rerun after a restart, a late event) changes nothing and sends nothing.
    again = model.on_event(done, {"event": "succeeded", "attempt": 1, "result": {"results": [1]}}, 4000)
    assert again.record is None and not again.statuses and not again.results
    assert model.on_event(done, {"event": "failed", "attempt": 2, "reason": "x"}, 4000).record is None


def test_repeated_job_id_is_not_run_again_but_its_result_is_sent_again() -> None:
    rec = submitted()
    assert not model.on_submit(rec, "j1", "backtest", CMD, 2, 1500).actions  # still queued: nothing new
    done = {**rec, "state": "succeeded", "result": {"job_id": "j1", "results": []}}
    fx = model.on_submit(done, "j1", "backtest", {**CMD, "priority": 9}, 2, 5000)
    assert fx.record is None and not fx.actions
    assert fx.results == [done["result"]]
    assert fx.statuses[0]["state"] == "succeeded" and "already used" in fx.statuses[0]["reason"]


def test_events_of_a_replaced_attempt_are_ignored() -> None:
    rec = submitted()
    running = model.on_event(rec, {"event": "started", "attempt": 1, "backend": "cpu"}, 2000).record
    assert running is not None
    # After a restart the job runs again as attempt 2.
    assert model.next_attempt(running) == 2
    rerun = model.on_event(running, {"event": "started", "attempt": 2, "backend": "cpu"}, 3000).record
    assert rerun is not None and rerun["attempt"] == 2
    assert model.on_event(rerun, {"event": "progress", "attempt": 1, "progress": 0.9}, 3100).record is None
    assert model.on_event(rerun, {"event": "started", "attempt": 1}, 3100).record is None
    failed = model.on_event(rerun, {"event": "failed", "attempt": 2, "reason": "boom"}, 3200)
    assert failed.record is not None and failed.record["state"] == "failed" and failed.statuses[0]["reason"] == "boom"


def test_cancel_and_reject() -> None:
    rec = submitted()
    fx = model.on_cancel(rec, "j1", 2000, None)
    assert fx.record is not None and fx.record["state"] == "cancelled" and fx.actions == [("cancel", "j1")]
    assert not model.on_cancel(fx.record, "j1", 2100, None).statuses
    assert model.on_cancel(None, "nope", 2000, None).dead_letter
    rej = model.on_reject(None, "j2", "backtest", CMD, 0, 1000, "unknown strategy 'x'")
    assert rej.record is not None and rej.statuses[0] == {"job_id": "j2", "kind": "backtest", "state": "rejected",
                                                          "ts": 1000, "attempt": 1, "reason": "unknown strategy 'x'"}


def test_cache_key_ignores_job_id_priority_timeout_and_backend_only() -> None:
    base = model.cache_key("backtest", CMD)
    same = {**CMD, "job_id": "other", "priority": 1, "timeout_s": 5, "backend": "gpu"}
    assert model.cache_key("backtest", same) == base
    assert model.cache_key("backtest", {**CMD, "universe": ["B"]}) != base
    assert model.cache_key("train", CMD) != base
    # Key order in the JSON does not matter.
    assert model.cache_key("backtest", dict(reversed(list(CMD.items())))) == base


def test_a_cache_hit_succeeds_at_once_without_running() -> None:
    fx = model.on_submit(None, "j9", "backtest", CMD, 1, 1000, cached={"job_id": "j1", "results": [1]},
                         cache_tier="l2")
    assert fx.record is not None and fx.record["state"] == "succeeded" and not fx.actions
    assert [s["state"] for s in fx.statuses] == ["queued", "succeeded"]
    assert fx.results == [{"job_id": "j9", "results": [1]}]


def test_identical_work_waits_for_the_running_job_instead_of_running_twice() -> None:
    fx = model.on_submit(None, "j2", "backtest", {**CMD, "job_id": "j2"}, 0, 1000, leader="j1")
    follower = fx.record
    assert follower is not None and follower["state"] == "queued" and follower["follows"] == "j1"
    assert not fx.actions and "waiting for its result" in fx.statuses[0]["reason"]
    shared = model.on_event(follower, {"event": "shared", "leader": "j1", "result": {"job_id": "j1", "r": 1}}, 2000)
    assert shared.record is not None and shared.record["state"] == "succeeded"
    assert shared.results == [{"job_id": "j2", "r": 1}] and shared.cache_put is None
    assert shared.statuses[0]["backend"] == "cache" and "j1" in shared.statuses[0]["reason"]
    # The leader failed or was cancelled: the follower runs on its own.
    alone = model.on_event(follower, {"event": "shared", "leader": "j1", "result": None}, 2000)
    assert alone.record is not None and alone.record["follows"] is None and alone.actions == [("enqueue", "j2")]
