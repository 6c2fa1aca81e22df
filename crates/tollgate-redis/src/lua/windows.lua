-- tollgate-redis: the window maths of tollgate::quota, on Redis's clock in microseconds.
-- Prepended to every script, after clock() (see scripts.rs).
--
-- A quota q is {kind, limit, cap, window, step} (microseconds, rounded up from the
-- Rust quota's nanoseconds, so never more permissive):
--   kind 1 sliding: step = granularity g; state {j1, c1, j2, c2, ...}, non-empty buckets
--                   in index order; bucket j stops counting at E(j) = (j+1)g + W - 1.
--   kind 2 fixed:   step = W; state {k, count} of the newest aligned window k.
--   kind 3 smooth:  step = T; state {tat, latest} (GCRA, burst = cap).
-- Times never go backwards per key (the caller clamps now to the latest time seen), so
-- no state needs the out-of-order handling of the in-memory ring.

-- floor(a / b) for non-negative integers below 2^53, exact despite float division.
local function div(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function expiry(q, j)
  return (j + 1) * q.step + q.window - 1
end

local function used_at(q, w, t)
  local used = 0
  for i = 1, #w, 2 do
    if expiry(q, w[i]) > t then
      used = used + w[i + 1]
    end
  end
  return used
end

-- The earliest t >= from at which cost (<= cap) units fit, if nothing else happens.
local function earliest(q, w, from, cost)
  if q.kind == 1 then
    local t = from
    local used = used_at(q, w, t)
    for i = 1, #w, 2 do
      if used + cost <= q.limit then
        break
      end
      local e = expiry(q, w[i])
      if e > t and w[i + 1] > 0 then
        used = used - w[i + 1]
        t = e
      end
    end
    return t
  elseif q.kind == 2 then
    if #w == 0 then
      return from
    end
    local at = div(from, q.window)
    if at < w[1] then
      at = w[1]
      from = at * q.window
    end
    if at > w[1] or w[2] + cost <= q.limit then
      return from
    end
    return (w[1] + 1) * q.window
  else
    local tat = w[1] or 0
    return math.max(from, tat - (q.cap - cost) * q.step)
  end
end

local function remaining(q, w, now)
  local left
  if q.kind == 1 then
    left = q.limit - used_at(q, w, now)
  elseif q.kind == 2 then
    if #w == 0 or div(now, q.window) > w[1] then
      left = q.limit
    else
      left = q.limit - w[2]
    end
  else
    local ahead = math.max(0, (w[1] or 0) - now)
    left = q.cap - div(ahead + q.step - 1, q.step)
  end
  return math.max(0, math.min(left, q.cap))
end

-- The RateLimit `t`: until one unit when none remains, else until full replenishment.
local function reset_after(q, w, now)
  local cost = q.cap
  if remaining(q, w, now) == 0 then
    cost = 1
  end
  return earliest(q, w, now, cost) - now
end

local function commit(q, w, now, cost)
  if cost == 0 then
    return w
  end
  if q.kind == 1 then
    local out = {}
    for i = 1, #w, 2 do
      if expiry(q, w[i]) > now and w[i + 1] > 0 then
        out[#out + 1] = w[i]
        out[#out + 1] = w[i + 1]
      end
    end
    local j = div(now, q.step)
    if #out > 0 and out[#out - 1] == j then
      out[#out] = out[#out] + cost
    else
      out[#out + 1] = j
      out[#out + 1] = cost
    end
    return out
  elseif q.kind == 2 then
    local at = div(now, q.window)
    if #w == 0 or at > w[1] then
      w = {at, 0}
    end
    w[2] = w[2] + cost
    return w
  else
    local tat = math.max(w[1] or 0, now) + cost * q.step
    return {tat, math.max(w[2] or 0, now)}
  end
end

-- Gives back an admission of cost units at admitted_at, as WindowState::refund does.
local function refund(q, w, admitted_at, now, cost)
  if q.kind == 1 then
    local j = div(admitted_at, q.step)
    for i = 1, #w, 2 do
      if w[i] == j then
        w[i + 1] = math.max(0, w[i + 1] - cost)
      end
    end
  elseif q.kind == 2 then
    if #w > 0 and div(admitted_at, q.window) == w[1] then
      w[2] = math.max(0, w[2] - cost)
    end
  elseif #w > 0 then
    local span = cost * q.step
    local later = math.max(now, w[2])
    local back = math.min(span, math.max(0, admitted_at + span - later))
    w[1] = w[1] - back
  end
  return w
end

-- The quotas in ARGV from index `first`: n groups of five numbers.
local function quotas(first, n)
  local qs = {}
  for i = 0, n - 1 do
    local b = first + 5 * i
    qs[i + 1] = {
      kind = tonumber(ARGV[b]),
      limit = tonumber(ARGV[b + 1]),
      cap = tonumber(ARGV[b + 2]),
      window = tonumber(ARGV[b + 3]),
      step = tonumber(ARGV[b + 4]),
    }
  end
  return qs
end

-- A key's quota state, or nil when there is none (or it is not one of ours: a value
-- left by another version or another program is replaced, never trusted).
local function load(key)
  local raw = redis.call('GET', key)
  if not raw then
    return nil
  end
  local ok, st = pcall(cmsgpack.unpack, raw)
  if ok and type(st) == 'table' and type(st.sig) == 'string' and type(st.lt) == 'number'
      and type(st.cd) == 'number' and type(st.nr) == 'number' and type(st.w) == 'table' then
    return st
  end
  return nil
end
