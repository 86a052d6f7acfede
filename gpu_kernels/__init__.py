"""Pure array kernels on NumPy or CuPy (indicators, bars, backtests, inference): none written yet."""
