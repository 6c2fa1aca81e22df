-- Takes a concurrency lease if fewer than `limit` unexpired leases are held.
--
-- lease(key, id, numbers, keyttl, real), called by the single and the batch script
-- (see scripts.rs) with:
-- key      the key's leases: a sorted set, member = lease id, score = expiry (Redis µs)
-- id       the new lease's id
-- numbers  limit and the lease's TTL in microseconds, two little-endian doubles
-- keyttl   the key's TTL in milliseconds, as a decimal string (the lease's, plus 1)
-- real     Redis's time (µs)
--
-- Returns 0 when taken, else the microseconds until the earliest lease expires (>= 1).
--
-- Expired leases (of a worker that died, or could not renew) are removed only when
-- the set looks full: below the limit, the unexpired ones are fewer still, so the
-- lease is granted without looking at scores. A key then keeps at most `limit` dead
-- leases until one acquisition finds it full or the key expires. This saves a
-- ZREMRANGEBYSCORE, and with it a number formatted as a string, on every acquisition:
-- counted with callgrind on redis-server 7.0, each redis.call costs 4,000 to 7,000
-- instructions and each string.format('%.0f') about 5,000, where the whole of an
-- EVALSHA of `return 1` costs 12,000.
local function lease(key, id, numbers, keyttl, real)
  local limit, ttl = struct.unpack('<dd', numbers)
  local held = redis.call('ZCARD', key)
  if held >= limit then
    held = held - redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', real))
  end
  if held < limit then
    redis.call('ZADD', key, string.format('%d', real + ttl), id)
    redis.call('PEXPIRE', key, keyttl)
    return 0
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return math.max(1, first[2] - real)
end
