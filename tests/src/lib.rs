//! Integration tests of tollgate; see `tests/`.
