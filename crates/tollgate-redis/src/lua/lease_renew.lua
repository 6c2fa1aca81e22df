-- Extends this worker's leases of one key to ARGV[1] microseconds from now.
--
-- KEYS[1]  the key's leases; ARGV[2..] the lease ids held by this worker
--
-- A lease still in the set is renewed even if its expiry has passed: every acquisition
-- drops expired leases before counting, so one still present was counted by nobody
-- else. Returns how many leases were gone (reclaimed: the holder was too slow).
local real = clock()
local ttl = tonumber(ARGV[1])
local expiry = string.format('%.0f', real + ttl)
local lost = 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  else
    lost = lost + 1
  end
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
end
return lost
