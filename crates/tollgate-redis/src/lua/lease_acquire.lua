-- Takes a concurrency lease if fewer than ARGV[1] unexpired leases are held.
--
-- KEYS[1]  the key's leases: a sorted set, member = lease id, score = expiry (Redis µs)
-- ARGV[1]  limit, ARGV[2] the new lease's id, ARGV[3] its TTL in microseconds
--
-- Returns {1, 0} when taken, {0, µs until the earliest lease expires} when full.
local real = clock()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', real))
local ttl = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], string.format('%.0f', real + ttl), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1)
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(1, tonumber(first[2]) - real)}
