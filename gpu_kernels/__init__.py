"""Pure array kernels (bars so far; indicators, backtests and inference next). No Kafka, no state of their own."""
