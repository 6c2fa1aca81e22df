-- Reads one key's state for operators, changing nothing.
--
-- KEYS[1]  the key's quota state, KEYS[2] its concurrency leases
-- ARGV[1]  the quota set (see windows.lua)
--
-- Returns {leases in force, µs until the cooldown ends, r1, t1, ...}; the usage is
-- that of a fresh key when the state is absent or was made for another set.
local real = clock()
local leases = redis.call('ZCOUNT', KEYS[2], '(' .. string.format('%.0f', real), '+inf')
local set = ARGV[1]
local s = load(KEYS[1])
local lt, cd = 0, 0
if s then
  lt, cd = s[2], s[3]
  if s[1] ~= sunpack('<d', set) then
    s = nil
  end
end
local now = max(real, lt)
local out = {leases, max(0, cd - real)}
local p = 6
for i = 0, (#set - 8) / 40 - 1 do
  local kind, limit, cap, window, step = sunpack('<ddddd', set, 40 * i + 9)
  local c = 0
  if s then
    c = s[p] or 0
  end
  out[2 * i + 3], out[2 * i + 4] = usage(kind, limit, cap, window, step, s, p, c, now)
  p = p + c + 1
end
return out
