-- Gives back an admission whose request never reached the server.
--
-- KEYS[1]  the key's quota state
-- ARGV[1]  the admission's time (microseconds, Redis clock), ARGV[2] its cost
-- ARGV[3]  the quota set (see windows.lua; a refund for another set does nothing)
--
-- Returns 1 when something was given back, 0 when the state is gone or was remade.
-- A refund changes numbers in place, never the size of a window.
local s = load(KEYS[1])
local set = ARGV[3]
if not s or s[1] ~= sunpack('<d', set) then
  return 0
end
local now = max(clock(), s[2])
local at, cost = tonumber(ARGV[1]), tonumber(ARGV[2])
local p = 6
for i = 0, (#set - 8) / 40 - 1 do
  local kind, _, _, window, step = sunpack('<ddddd', set, 40 * i + 9)
  local c = s[p] or 0
  -- As WindowState::refund does.
  if kind == 1 then
    local j = div(at, step)
    for k = p + 1, p + c, 2 do
      if s[k] == j then
        s[k + 1] = max(0, s[k + 1] - cost)
      end
    end
  elseif kind == 2 then
    if c > 0 and div(at, window) == s[p + 1] then
      s[p + 2] = max(0, s[p + 2] - cost)
    end
  elseif c > 0 then
    local span = cost * step
    local later = max(now, s[p + 2])
    s[p + 1] = s[p + 1] - min(span, max(0, at + span - later))
  end
  p = p + c + 1
end
redis.call('SET', KEYS[1], encode(s, #s), 'KEEPTTL')
return 1
