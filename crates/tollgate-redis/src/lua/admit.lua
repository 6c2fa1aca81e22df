-- Admits `cost` units on every quota of one key, all or nothing, on Redis's clock.
--
-- KEYS[1]  the key's quota state (a flat MessagePack array, see windows.lua)
-- ARGV[1]  the request, five little-endian doubles:
--          cost;
--          hold: microseconds from now during which nothing is admitted (the global
--          cooldown as this worker knows it);
--          spacing: > 0 for a request released from a wait queue, no admission of
--          the key before now + spacing afterwards;
--          report: 1 to report each quota's usage;
--          forget: TTL of the state after an admission (the set's forget_after, µs)
-- ARGV[2]  the quota set (see windows.lua), also its signature: a state made for
--          another set restarts its windows
--
-- Returns {1, now, r1, t1, ...} when admitted (r/t only when reported),
--         {0, wait, throttled, index} when refused (wait from the real server time),
--         {2, index} when a cost can never fit.
local real = clock()
local cost, hold, spacing, report, forget = struct.unpack('<ddddd', ARGV[1])
local set = ARGV[2]

local s = load(KEYS[1])
local lt, cd, nr = 0, 0, 0
if s then
  lt, cd, nr = s[2], s[3], s[4]
  if s[1] ~= set then
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
local o = {set, now, cd, nr}
local m, p = 4, 5
local longest, index = 0, 0
for i = 0, #set / 40 - 1 do
  local kind, limit, cap, window, step = struct.unpack('<ddddd', set, 40 * i + 1)
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
redis.call('SET', KEYS[1], cmsgpack.pack(o), 'PX', string.format('%d', math.ceil(ttl / 1000)))

if report ~= 1 then
  return {1, now}
end
local out = {1, now}
p = 5
for i = 0, #set / 40 - 1 do
  local kind, limit, cap, window, step = struct.unpack('<ddddd', set, 40 * i + 1)
  local c = o[p]
  out[2 * i + 3], out[2 * i + 4] = usage(kind, limit, cap, window, step, o, p, c, now)
  p = p + c + 1
end
return out
