-- Extends this worker's leases of one key to ARGV[1] microseconds from now.
--
-- KEYS[1]  the key's leases; ARGV[2..] the lease ids held by this worker
--
-- A lease stands for a request that is really in flight, so one that is gone (it
-- expired while this worker could not renew it, or Redis restarted without its data)
-- is put back: the count then tells the truth again, even if it is above the limit
-- for a while (new acquisitions wait until it is below). Returns how many were gone.
local real = clock()
local ttl = tonumber(ARGV[1])
local expiry = string.format('%.0f', real + ttl)
local gone = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], expiry, ARGV[i]) == 1 then
    gone = gone + 1
  end
end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
return gone
