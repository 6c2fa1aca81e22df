-- Gives back an admission whose request never reached the server.
--
-- KEYS[1]  the key's quota state
-- ARGV[1]  the admission's time (microseconds, Redis clock), ARGV[2] its cost
-- ARGV[3]  the quota set's signature (a refund for another set does nothing)
-- ARGV[4]  n, then 5 numbers per quota
--
-- Returns 1 when something was given back, 0 when the state is gone or was remade.
local st = load(KEYS[1])
if not st or st.sig ~= ARGV[3] then
  return 0
end
local now = math.max(clock(), st.lt)
local qs = quotas(5, tonumber(ARGV[4]))
for i = 1, #qs do
  st.w[i] = refund(qs[i], st.w[i] or {}, tonumber(ARGV[1]), now, tonumber(ARGV[2]))
end
redis.call('SET', KEYS[1], cmsgpack.pack(st), 'KEEPTTL')
return 1
