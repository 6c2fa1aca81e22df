-- tollgate-redis: the window maths of tollgate::quota, on Redis's clock in microseconds.
-- Prepended to the quota scripts, after clock() (see scripts.rs).
--
-- Written for the admission path, which runs on every request: numbers are passed as
-- arguments, with no table per quota or per window, and there are few functions (each
-- `local function` is a closure built again on every call).
--
-- A quota is five numbers: kind, limit, cap, window, step (microseconds, rounded up
-- from the Rust quota's nanoseconds, so never more permissive).
--   kind 1 sliding: step = granularity g; state j1, c1, j2, c2, ...: non-empty buckets
--                   in index order; bucket j stops counting at E(j) = (j+1)g + W - 1.
--   kind 2 fixed:   step = W; state k, count of the newest aligned window k.
--   kind 3 smooth:  step = T; state tat, latest (GCRA, burst = cap).
-- A quota set is one argument of little-endian doubles (exact below 2^53): its
-- signature, then its quotas' numbers, 40 bytes per quota, read with
-- struct.unpack('<ddddd', set, 40 * i + 9). That costs no decimal parsing (tonumber
-- is a strtod, about a quarter of a microsecond each). The signature is a 52-bit hash
-- of the quotas' bytes made by the caller (never 0): a state made for another set
-- restarts its windows.
--
-- A key's state is one string of little-endian doubles, read by load() into one flat
-- table and written back by encode():
--   {sig, lt, cd, nr, ex, n1, <n1 numbers>, n2, <n2 numbers>, ...}
-- (the signature of the set it was made for, 0 for none; latest time, cooldown end,
-- next release, the end of the TTL the admission script last set (0: unknown); then
-- each quota's window state as a count and its numbers; a count of 0 is an empty
-- window.)
-- Below, a window is (s, p, c): its count is s[p], its numbers s[p+1] .. s[p+c].
-- Times never go backwards per key (the caller clamps now to the latest time seen), so
-- no state needs the out-of-order handling of the in-memory ring.
--
-- Why doubles and a signature rather than a MessagePack array holding the set's bytes:
-- counted with callgrind on redis-server 7.0 (one sliding quota, a state of one
-- bucket), cmsgpack.pack and the pcall'd cmsgpack.unpack cost about 6,800
-- instructions each, and every string a script makes (a substring, a concatenation)
-- about 1,000 to 2,500; one struct.unpack or struct.pack of all the numbers costs
-- about 1,500 and makes one string at most.

local floor, max, min = math.floor, math.max, math.min
local spack, sunpack = struct.pack, struct.unpack

-- floor(a / b) for non-negative integers below 2^53, exact despite float division.
local function div(a, b)
  local q = floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- The earliest t >= from at which cost (<= cap) units fit, if nothing else happens.
local function earliest(kind, limit, cap, window, step, s, p, c, from, cost)
  if kind == 1 then
    local t, used = from, 0
    for i = p + 1, p + c, 2 do
      if (s[i] + 1) * step + window - 1 > t then
        used = used + s[i + 1]
      end
    end
    for i = p + 1, p + c, 2 do
      if used + cost <= limit then
        break
      end
      local e = (s[i] + 1) * step + window - 1
      if e > t and s[i + 1] > 0 then
        used = used - s[i + 1]
        t = e
      end
    end
    return t
  elseif kind == 2 then
    if c == 0 then
      return from
    end
    local k = s[p + 1]
    local at = div(from, window)
    if at < k then
      at = k
      from = at * window
    end
    if at > k or s[p + 2] + cost <= limit then
      return from
    end
    return (k + 1) * window
  end
  local tat = 0
  if c > 0 then
    tat = s[p + 1]
  end
  return max(from, tat - (cap - cost) * step)
end

-- Remaining units now, and the RateLimit `t`: until one unit when none remains, else
-- until full replenishment.
local function usage(kind, limit, cap, window, step, s, p, c, now)
  local left
  if kind == 1 then
    left = limit
    for i = p + 1, p + c, 2 do
      if (s[i] + 1) * step + window - 1 > now then
        left = left - s[i + 1]
      end
    end
  elseif kind == 2 then
    left = limit
    if c > 0 and div(now, window) <= s[p + 1] then
      left = limit - s[p + 2]
    end
  else
    local ahead = 0
    if c > 0 then
      ahead = max(0, s[p + 1] - now)
    end
    left = cap - div(ahead + step - 1, step)
  end
  left = max(0, min(left, cap))
  local want = cap
  if left == 0 then
    want = 1
  end
  return left, earliest(kind, limit, cap, window, step, s, p, c, now, want) - now
end

-- Appends to o, after index m, the window (s, p, c) once cost units are admitted at
-- now: its count, then its numbers. Returns o's new length.
local function commit(kind, window, step, s, p, c, now, cost, o, m)
  local at = m + 1
  local k = at
  if cost == 0 then
    for i = p + 1, p + c do
      k = k + 1
      o[k] = s[i]
    end
  elseif kind == 1 then
    for i = p + 1, p + c, 2 do
      local n = s[i + 1]
      if n > 0 and (s[i] + 1) * step + window - 1 > now then
        o[k + 1], o[k + 2] = s[i], n
        k = k + 2
      end
    end
    local j = div(now, step)
    if k > at and o[k - 1] == j then
      o[k] = o[k] + cost
    else
      o[k + 1], o[k + 2] = j, cost
      k = k + 2
    end
  elseif kind == 2 then
    local w = div(now, window)
    if c == 0 or w > s[p + 1] then
      o[k + 1], o[k + 2] = w, cost
    else
      o[k + 1], o[k + 2] = s[p + 1], s[p + 2] + cost
    end
    k = k + 2
  else
    local tat, latest = 0, 0
    if c > 0 then
      tat, latest = s[p + 1], s[p + 2]
    end
    o[k + 1], o[k + 2] = max(tat, now) + cost * step, max(latest, now)
    k = k + 2
  end
  o[at] = k - at
  return k
end

-- The format of n (at most 64) doubles, cut from a constant once per call of the
-- script and kept: making a string costs about 1,000 to 2,500 instructions, and a
-- batch of admissions mostly reads and writes states of a few lengths.
local DOUBLES =
  '<dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd'
local FORMATS = {}
local function doubles(n)
  local f = FORMATS[n]
  if not f then
    f = DOUBLES:sub(1, n + 1)
    FORMATS[n] = f
  end
  return f
end

-- A key's quota state, or nil when there is none (or it is not one of ours: a value
-- left by another version or another program is replaced, never trusted). The caller
-- compares s[1] with its set's signature.
local function load(key)
  local raw = redis.call('GET', key)
  if not raw then
    return nil
  end
  local len = #raw / 8
  if len < 5 or len % 1 ~= 0 then
    return nil
  end
  local s
  if len <= 64 then
    -- The numbers, then the position after them (cut).
    s = {sunpack(doubles(len), raw)}
    s[len + 1] = nil
  else
    -- Lua's stack holds about 8,000 values: a long state is read in slices.
    s = {}
    local m = 0
    while m < len do
      local k = min(len - m, 64)
      local part = {sunpack(doubles(k), raw, 8 * m + 1)}
      for i = 1, k do
        s[m + i] = part[i]
      end
      m = m + k
    end
  end
  -- (x ~= x: NaN)
  if s[2] ~= s[2] or s[3] ~= s[3] or s[4] ~= s[4] or s[5] ~= s[5] then
    return nil
  end
  local p = 6
  while p <= len do
    local c = s[p]
    if c < 0 or c % 2 ~= 0 or p + c > len then
      return nil
    end
    for i = p + 1, p + c do
      if s[i] ~= s[i] then
        return nil
      end
    end
    p = p + c + 1
  end
  return s
end

-- The state string of s[1 .. m], a table as load() returns.
local function encode(s, m)
  if m <= 64 then
    return spack(doubles(m), unpack(s, 1, m))
  end
  local parts = {}
  for i = 1, m, 64 do
    local j = min(i + 63, m)
    parts[#parts + 1] = spack(doubles(j - i + 1), unpack(s, i, j))
  end
  return table.concat(parts)
end
