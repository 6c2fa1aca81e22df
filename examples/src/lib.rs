//! Runnable examples of tollgate; see the `[[example]]` targets.
