//! The Lua scripts, each loaded once per server and run with `EVALSHA`.
//!
//! [`redis::Script`] sends `EVALSHA` and, on `NOSCRIPT` (a restarted or flushed
//! server, a failover to a replica that never saw the script), loads the script and
//! runs it again in the same call. Every script is the shared window maths
//! (`lua/windows.lua`) followed by its own body, so each is self-contained.

use std::sync::LazyLock;

use redis::Script;

const WINDOWS: &str = include_str!("lua/windows.lua");

pub(crate) struct Scripts {
    pub(crate) admit: Script,
    pub(crate) refund: Script,
    pub(crate) cooldown: Script,
    pub(crate) global: Script,
    pub(crate) lease_acquire: Script,
    pub(crate) lease_renew: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{WINDOWS}\n{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    admit: script(include_str!("lua/admit.lua")),
    refund: script(include_str!("lua/refund.lua")),
    cooldown: script(include_str!("lua/cooldown.lua")),
    global: script(include_str!("lua/global.lua")),
    lease_acquire: script(include_str!("lua/lease_acquire.lua")),
    lease_renew: script(include_str!("lua/lease_renew.lua")),
});
