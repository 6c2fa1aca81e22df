-- Admits `cost` units on every quota of one key, all or nothing, on Redis's clock.
--
-- KEYS[1]  the key's quota state (see windows.lua)
-- ARGV[1]  the request, five little-endian doubles:
--          cost;
--          hold: microseconds from now during which nothing is admitted (the global
--          cooldown as this worker knows it);
--          spacing: > 0 for a request released from a wait queue, no admission of
--          the key before now + spacing afterwards;
--          report: 1 to report each quota's usage;
--          forget: TTL of the state after an admission (the set's forget_after, µs);
--          then the quota set (see windows.lua) from byte 41, its signature first.
--          (One argument rather than two: Redis builds ARGV afresh on every call,
--          about 2,000 instructions per element.)
--
-- Returns now (an integer) when admitted and nothing is reported,
--         {1, now, r1, t1, ...} when admitted and reported,
--         {0, wait, throttled, index} when refused (wait from the real server time),
--         {2, index} when a cost can never fit.
-- (The common answer is a bare integer: Redis turns a returned table into a reply
-- element by element, after looking up its `err` and `ok` fields, about 4,500
-- instructions for {1, now}.)
local real = clock()
local arg = ARGV[1]
local cost, hold, spacing, report, forget, sig = sunpack('<dddddd', arg)
local quotas = (#arg - 48) / 40

local s = load(KEYS[1])
local lt, cd, nr = 0, 0, 0
if s then
  lt, cd, nr = s[2], s[3], s[4]
  if s[1] ~= sig then
    -- Made for another quota set (or by a cooldown before any admission): the
    -- windows restart, the times stay.
    s = nil
  end
end
-- Per key, time never runs backwards: a wall clock stepped back reopens nothing.
local now = max(real, lt)

local global = 0
if hold > 0 then
  global = real + hold
end
local cooldown = max(global, cd)
local blocked = max(cooldown, nr)
local waits = max(0, blocked - now)
if spacing > 0 then
  nr = now + spacing
end

-- One pass: each quota's wait, and its window as it will be if all of them admit
-- (thrown away on a refusal).
local o = {sig, now, cd, nr}
local m, p = 4, 5
local longest, index = 0, 0
for i = 0, quotas - 1 do
  local kind, limit, cap, window, step = sunpack('<ddddd', arg, 40 * i + 49)
  if cost > cap then
    return {2, i}
  end
  local c = 0
  if s then
    c = s[p] or 0
  end
  local wait = earliest(kind, limit, cap, window, step, s, p, c, now, cost) - now
  if wait > longest then
    longest, index = wait, i
  end
  m = commit(kind, window, step, s, p, c, now, cost, o, m)
  p = p + c + 1
end
if longest > 0 or waits > 0 then
  local throttled = 0
  if waits > longest and cooldown >= blocked then
    throttled = 1
  end
  return {0, now + max(longest, waits) - real, throttled, index}
end

-- Milliseconds as a string: redis.call writes a number argument with "%.17g", which
-- costs as much as the rest of SET.
local ttl = max(forget, cd - now, nr - now) + 1000
redis.call('SET', KEYS[1], encode(o, m), 'PX', string.format('%d', math.ceil(ttl / 1000)))

if report ~= 1 then
  return now
end
local out = {1, now}
p = 5
for i = 0, quotas - 1 do
  local kind, limit, cap, window, step = sunpack('<ddddd', arg, 40 * i + 49)
  local c = o[p]
  out[2 * i + 3], out[2 * i + 4] = usage(kind, limit, cap, window, step, o, p, c, now)
  p = p + c + 1
end
return out
