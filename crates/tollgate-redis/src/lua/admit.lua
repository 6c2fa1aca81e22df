-- Admits `cost` units on every quota of one key, all or nothing, on Redis's clock.
--
-- KEYS[1]  the key's quota state (a MessagePack map: sig, lt, cd, nr, w)
-- ARGV[1]  cost
-- ARGV[2]  hold: microseconds from now during which nothing is admitted (the global
--          cooldown as this worker knows it)
-- ARGV[3]  spacing: > 0 for a request released from a wait queue; no admission of the
--          key before now + spacing afterwards
-- ARGV[4]  1 to report each quota's usage
-- ARGV[5]  TTL of the state after an admission (the set's forget_after), microseconds
-- ARGV[6]  the quota set's signature; a state made for another set restarts its windows
-- ARGV[7]  n, the number of quotas; then 5 numbers per quota (see windows.lua)
--
-- Returns {1, now, r1, t1, ...} when admitted (r/t only when reported),
--         {0, wait, throttled, index} when refused (wait from the real server time),
--         {2, index} when a cost can never fit.
local real = clock()
local cost = tonumber(ARGV[1])
local hold = tonumber(ARGV[2])
local spacing = tonumber(ARGV[3])
local forget = tonumber(ARGV[5])
local sig = ARGV[6]
local qs = quotas(8, tonumber(ARGV[7]))

local st = load(KEYS[1]) or {sig = sig, lt = 0, cd = 0, nr = 0, w = {}}
if st.sig ~= sig then
  st.sig = sig
  st.w = {}
end
for i = 1, #qs do
  st.w[i] = st.w[i] or {}
end
-- Per key, time never runs backwards: a wall clock stepped back reopens nothing.
local now = math.max(real, st.lt)

local global = 0
if hold > 0 then
  global = real + hold
end
local cooldown = math.max(global, st.cd)
local blocked = math.max(cooldown, st.nr)
local waits = math.max(0, blocked - now)

local longest, index = 0, 0
for i = 1, #qs do
  if cost > qs[i].cap then
    return {2, i - 1}
  end
  local wait = earliest(qs[i], st.w[i], now, cost) - now
  if wait > longest then
    longest, index = wait, i - 1
  end
end
if longest > 0 or waits > 0 then
  local throttled = 0
  if waits > longest and cooldown >= blocked then
    throttled = 1
  end
  return {0, now + math.max(longest, waits) - real, throttled, index}
end

for i = 1, #qs do
  st.w[i] = commit(qs[i], st.w[i], now, cost)
end
if spacing > 0 then
  st.nr = now + spacing
end
st.lt = now
local ttl = math.max(forget, st.cd - now, st.nr - now) + 1000
redis.call('SET', KEYS[1], cmsgpack.pack(st), 'PX', math.ceil(ttl / 1000))

local out = {1, now}
if ARGV[4] == '1' then
  for i = 1, #qs do
    out[#out + 1] = remaining(qs[i], st.w[i], now)
    out[#out + 1] = reset_after(qs[i], st.w[i], now)
  end
end
return out
