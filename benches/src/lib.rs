//! Benchmarks of tollgate; see `benches/`.
