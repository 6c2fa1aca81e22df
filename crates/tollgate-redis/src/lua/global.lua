-- The global cooldown: sets it to at least ARGV[1] microseconds from now (0: only
-- reads it), and returns the microseconds until it ends (0 when none is pending).
--
-- KEYS[1]  the global cooldown key (its value: the end, in Redis microseconds)
local real = clock()
local delay = tonumber(ARGV[1])
local until_ = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if delay > 0 and real + delay > until_ then
  until_ = real + delay
  redis.call('SET', KEYS[1], string.format('%.0f', until_), 'PX', math.ceil(delay / 1000) + 1)
end
return math.max(0, until_ - real)
