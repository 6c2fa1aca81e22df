-- Admits nothing for one key during the next ARGV[1] microseconds (a later cooldown
-- wins over an earlier one). A key without state gets one made for no quota set, which
-- its first admission fits to its set, keeping the cooldown.
--
-- KEYS[1]  the key's quota state
-- Returns the microseconds until the key's cooldown ends.
local real = clock()
local delay = tonumber(ARGV[1])
local st = load(KEYS[1]) or {sig = '', lt = 0, cd = 0, nr = 0, w = {}}
st.cd = math.max(st.cd, real + delay)
local ttl = math.max(redis.call('PTTL', KEYS[1]), math.ceil((st.cd - real) / 1000) + 1)
redis.call('SET', KEYS[1], cmsgpack.pack(st), 'PX', ttl)
return st.cd - real
