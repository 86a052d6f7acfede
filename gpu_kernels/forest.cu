// Forest inference for the GPU: one thread per row walks every tree in tree order and adds the leaf values
// it reaches, exactly as the compiled CPU engine of gpu_kernels/forest.py (`_sum_block`) does, so both give
// the same bits. The tables are that engine's layout (`_layout`): per tree in breadth-first order, one int64
// word per node holding the feature (bits 0-23), where NaN goes (bit 24: left), zero-as-missing (bit 25) and
// the first child (bits 32-63; the second child follows it); a leaf is its own first child, threshold +inf,
// NaN-left, so a row that reaches it early stays there for the rest of the tree's `depth` steps.
//
// Like indicators.cu, the text is compiled by CuPy (NVRTC) for the device and by the host C++ compiler in the
// test suite, with the prelude of gpu_kernels/cuda_indicators.py.
//
// Arguments: X (rows, n_features) row-major, float64, or float32 for forests that compare float32 copies of
// the features (scikit-learn, cuML; their thresholds then come rounded down to float32); roots, depth per
// tree; threshold, word per node; value (nodes, k_out); out (rows, k_out), zeroed by the caller.

template <typename Real>
SQ_DEVICE void sq_forest_row(const Real* X, long long rows, long long n_features, const long long* roots,
                             const long long* depth, long long trees, const Real* threshold, const long long* word,
                             const double* value, long long k_out, double* out) {
    long long r = SQ_THREAD;
    if (r >= rows) return;
    const Real* x = X + r * n_features;
    double* o = out + r * k_out;
    for (long long t = 0; t < trees; ++t) {
        long long node = roots[t];
        for (long long step = depth[t]; step > 0; --step) {
            long long w = word[node];
            Real v = x[w & 0xFFFFFF];
            bool missing = (v != v) || (((w >> 25) & 1) && v == 0);
            bool right = missing ? !((w >> 24) & 1) : !(v <= threshold[node]);
            node = (w >> 32) + (right ? 1 : 0);
        }
        for (long long k = 0; k < k_out; ++k) o[k] += value[node * k_out + k];
    }
}

SQ_KERNEL sq_forest_f64(const double* X, long long rows, long long n_features, const long long* roots,
                        const long long* depth, long long trees, const double* threshold, const long long* word,
                        const double* value, long long k_out, double* out) {
    sq_forest_row<double>(X, rows, n_features, roots, depth, trees, threshold, word, value, k_out, out);
}

SQ_KERNEL sq_forest_f32(const float* X, long long rows, long long n_features, const long long* roots,
                        const long long* depth, long long trees, const float* threshold, const long long* word,
                        const double* value, long long k_out, double* out) {
    sq_forest_row<float>(X, rows, n_features, roots, depth, trees, threshold, word, value, k_out, out);
}
