"""Prometheus metrics of the processors."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TICKS_IN = Counter("streamquant_ticks_in_total", "Tick messages consumed by the feature processor")
BATCHES = Counter("streamquant_batches_total", "Micro-batches committed", ["processor"])
BATCH_SIZE = Histogram("streamquant_batch_size", "Messages per micro-batch", ["processor"],
                       buckets=(1, 10, 100, 1_000, 5_000, 10_000, 50_000, 100_000))
BATCH_SECONDS = Histogram("streamquant_batch_seconds", "Time to process and commit one micro-batch", ["processor"],
                          buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
COMMIT_SECONDS = Histogram("streamquant_transaction_commit_seconds", "Time to commit a batch's transaction",
                           ["processor"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))
PUBLISH_LATENCY = Histogram("streamquant_tick_to_publish_seconds",
                            "From a batch's newest tick being produced to its outputs being committed",
                            ["processor"], buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
REPLAYED_TICKS = Counter("streamquant_replayed_ticks_total",
                         "Ticks replayed on restore, from a partition's last state checkpoint to its committed offset")
LATE_TICKS = Counter("streamquant_late_ticks_total", "Ticks for a bar that had already closed (sent to ticks.late)")
BARS_OUT = Counter("streamquant_bars_total", "Closed bars published", ["interval"])
ABORTS = Counter("streamquant_transaction_aborts_total", "Transactions aborted and batches re-read", ["processor"])
PRODUCER_RESETS = Counter("streamquant_producer_resets_total", "Transactional producers recreated after a fatal error",
                          ["processor"])
GPU_FALLBACKS = Counter("streamquant_gpu_fallbacks_total", "Batches recomputed on the CPU after a GPU failure",
                        ["processor"])
ACTIVE_BACKEND = Gauge("streamquant_active_backend", "1 for the backend computing the batches",
                       ["processor", "backend"])
CONSUMER_LAG = Gauge("streamquant_consumer_lag", "Messages behind the end of each input partition",
                     ["processor", "partition"])
CLOSE_GATHERS = Counter("streamquant_close_gathers_total", "Batches that passed a bar boundary on some partitions "
                        "and took what arrived next for the others (outcome: complete, timed out, rebalanced)",
                        ["processor", "outcome"])
