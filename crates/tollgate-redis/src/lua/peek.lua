-- Reads one key's state for operators, changing nothing.
--
-- KEYS[1]  the key's quota state, KEYS[2] its concurrency leases
-- ARGV[1]  the quota set's signature, ARGV[2] n, then 5 numbers per quota
--
-- Returns {leases in force, µs until the cooldown ends, r1, t1, ...}; the usage is
-- that of a fresh key when the state is absent or was made for another set.
local real = clock()
local leases = redis.call('ZCOUNT', KEYS[2], '(' .. string.format('%.0f', real), '+inf')
local qs = quotas(3, tonumber(ARGV[2]))
local st = load(KEYS[1]) or {sig = ARGV[1], lt = 0, cd = 0, nr = 0, w = {}}
if st.sig ~= ARGV[1] then
  st.w = {}
end
local now = math.max(real, st.lt)
local out = {leases, math.max(0, st.cd - real)}
for i = 1, #qs do
  local w = st.w[i] or {}
  out[#out + 1] = remaining(qs[i], w, now)
  out[#out + 1] = reset_after(qs[i], w, now)
end
return out
