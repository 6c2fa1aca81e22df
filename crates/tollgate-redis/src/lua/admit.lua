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
local function admit(key, arg, real)
  local cost, hold, spacing, report, forget, sig = sunpack('<dddddd', arg)
  local quotas = (#arg - 48) / 40

  local s = load(key)
  local lt, cd, nr, ex = 0, 0, 0, 0
  if s then
    lt, cd, nr, ex = s[2], s[3], s[4], s[5]
    if s[1] ~= sig then
      -- Made for another quota set (or by a cooldown before any admission): the
      -- windows restart, the times stay.
      s = nil
    end
  end
  -- Per key, time never runs backwards: a wall clock stepped back reopens nothing.
  -- (Comparisons rather than math.max: each call of a C function costs more than
  -- the few instructions of an `if`.)
  local now = real
  if lt > now then
    now = lt
  end

  local cooldown = cd
  if hold > 0 and real + hold > cooldown then
    cooldown = real + hold
  end
  local blocked = cooldown
  if nr > blocked then
    blocked = nr
  end
  local waits = blocked - now
  if waits < 0 then
    waits = 0
  end
  if spacing > 0 then
    nr = now + spacing
  end

  -- One pass: each quota's wait, and its window as it will be if all of them admit
  -- (thrown away on a refusal).
  -- Made with room for the windows (twelve numbers: one sliding window of three
  -- buckets, or two small windows): a table that outgrows its array part is rehashed,
  -- each time about as dear as making it. encode() writes o[1 .. m] only.
  local o = {sig, now, cd, nr, ex, 0, 0, 0, 0, 0, 0, 0}
  local m, p = 5, 6
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
    if waits > longest then
      longest = waits
    end
    return {0, now + longest - real, throttled, index}
  end

  -- The state must outlive its last use: `need` from now. Its TTL is set to twice
  -- that, with the end recorded in the state (o[5], Redis µs), and left alone
  -- (KEEPTTL) while the end is still far enough: setting a TTL costs about 5,000
  -- instructions, a third of SET. No script ever shortens a TTL (the refund keeps it,
  -- a cooldown only lengthens it), so the key lives at least until o[5].
  local need = forget
  if cd - now > need then
    need = cd - now
  end
  if nr - now > need then
    need = nr - now
  end
  need = need + 1000
  if ex >= real + need then
    redis.call('SET', key, encode(o, m), 'KEEPTTL')
  else
    -- Milliseconds as a string: redis.call writes a number argument with "%.17g",
    -- which costs as much as the rest of SET.
    local ms = math.ceil(2 * need / 1000)
    o[5] = real + 1000 * ms
    redis.call('SET', key, encode(o, m), 'PX', string.format('%d', ms))
  end

  if report ~= 1 then
    return now
  end
  local out = {1, now}
  p = 6
  for i = 0, quotas - 1 do
    local kind, limit, cap, window, step = sunpack('<ddddd', arg, 40 * i + 49)
    local c = o[p]
    out[2 * i + 3], out[2 * i + 4] = usage(kind, limit, cap, window, step, o, p, c, now)
    p = p + c + 1
  end
  return out
end
