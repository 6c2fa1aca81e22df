//! Redis store for tollgate (work in progress: see issue 6).
