-- Admits nothing for one key during the next ARGV[1] microseconds (a later cooldown
-- wins over an earlier one). A key without state gets one made for no quota set, which
-- its first admission fits to its set, keeping the cooldown (signature 0: no set).
--
-- KEYS[1]  the key's quota state
-- Returns the microseconds until the key's cooldown ends.
local real = clock()
local delay = tonumber(ARGV[1])
local s = load(KEYS[1]) or {0, 0, 0, 0, 0}
s[3] = max(s[3], real + delay)
local ttl = max(redis.call('PTTL', KEYS[1]), math.ceil((s[3] - real) / 1000) + 1)
redis.call('SET', KEYS[1], encode(s, #s), 'PX', ttl)
return s[3] - real
