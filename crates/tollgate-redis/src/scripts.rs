//! The Lua scripts, each loaded once per server and run with `EVALSHA`.
//!
//! [`redis::Script`] sends `EVALSHA` and, on `NOSCRIPT` (a restarted or flushed
//! server, a failover to a replica that never saw the script), loads the script and
//! runs it again in the same call. Every script is the clock and its own body; the
//! quota scripts also get the shared window maths (`lua/windows.lua`) in between, so
//! each is self-contained and the lease scripts do not build closures they never call.

use std::sync::LazyLock;

use redis::Script;

/// Redis's clock, in microseconds since the Unix epoch (below 2^53 until 2255). The
/// arithmetic converts `TIME`'s two strings itself: `tonumber` would call a C function
/// that parses each string twice (about 1,300 instructions each, counted with
/// callgrind on redis-server 7.0).
const CLOCK: &str = "local function clock()
  local t = redis.call('TIME')
  return t[1] * 1000000 + t[2]
end
";

const WINDOWS: &str = include_str!("lua/windows.lua");
pub(crate) const ADMIT: &str = concat!(
    include_str!("lua/admit.lua"),
    "return admit(KEYS[1], ARGV[1], clock())\n"
);
/// Several admissions in one call (see `batch.rs` and `lua/batch.lua`): `KEYS[i]`
/// and `ARGV[i]` are admission i's.
pub(crate) const ADMIT_BATCH: &str = concat!(
    include_str!("lua/admit.lua"),
    include_str!("lua/batch.lua"),
    "return batch(function(i, real)
  return admit(KEYS[i], ARGV[i], real)
end)
"
);

/// Several lease acquisitions in one call, as `ADMIT_BATCH` admissions: `KEYS[i]` and
/// `ARGV[3i - 2 .. 3i]` are acquisition i's.
const LEASE_BATCH: &str = concat!(
    include_str!("lua/lease_acquire.lua"),
    include_str!("lua/batch.lua"),
    "return batch(function(i, real)
  return lease(KEYS[i], ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i], real)
end)
"
);

pub(crate) const REFUND: &str = include_str!("lua/refund.lua");

pub(crate) struct Scripts {
    pub(crate) admit: Script,
    pub(crate) admit_batch: Script,
    pub(crate) refund: Script,
    pub(crate) cooldown: Script,
    pub(crate) global: Script,
    pub(crate) lease_acquire: Script,
    pub(crate) lease_batch: Script,
    pub(crate) lease_renew: Script,
    pub(crate) peek: Script,
}

fn script(clock: &str, body: &str) -> Script {
    Script::new(&format!("{clock}{WINDOWS}\n{body}"))
}

fn plain(body: &str) -> Script {
    Script::new(&format!("{CLOCK}{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    admit: script(CLOCK, ADMIT),
    admit_batch: script(CLOCK, ADMIT_BATCH),
    refund: script(CLOCK, REFUND),
    cooldown: script(CLOCK, include_str!("lua/cooldown.lua")),
    global: plain(include_str!("lua/global.lua")),
    // Reads the time itself: one closure fewer.
    lease_acquire: Script::new(concat!(
        include_str!("lua/lease_acquire.lua"),
        "local t = redis.call('TIME')
return lease(KEYS[1], ARGV[1], ARGV[2], ARGV[3], t[1] * 1000000 + t[2])
"
    )),
    lease_batch: plain(LEASE_BATCH),
    lease_renew: plain(include_str!("lua/lease_renew.lua")),
    peek: script(CLOCK, include_str!("lua/peek.lua")),
});

/// `body` on a clock the caller passes as the last argument (microseconds), for tests
/// that drive the scripts through time they choose.
#[cfg(test)]
pub(crate) fn with_fake_clock(body: &str) -> Script {
    script(
        "local function clock()\n  return tonumber(ARGV[#ARGV])\nend\n",
        body,
    )
}
