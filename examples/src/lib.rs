//! Runnable examples of tollgate: see `examples/examples/`.
//!
//! This library holds what several examples share, so that each example file keeps
//! only its own job: [`graph`], the Microsoft Graph mail client of `mailbox_sync` and
//! `fleet_worker` (the full tollgate stack, paging, the limits of the simulator).

pub mod graph;
