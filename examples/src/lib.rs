//! Runnable examples of tollgate: see `examples/examples/`.
