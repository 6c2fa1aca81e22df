-- Several calls in one (see batch.rs): call(i, real) answers call i, whose key is
-- KEYS[i], on one reading of the clock; the answers come back in order. Each runs
-- under pcall, so that a command error (a value of another type under a key) is call
-- i's answer, {3, message}, and no other call's. (Not an error reply inside the
-- array: redis-rs turns an array holding one into an error for the whole call.)
local function batch(call)
  local real = clock()
  local out = {}
  for i = 1, #KEYS do
    local ok, r = pcall(call, i, real)
    if not ok then
      if type(r) == 'table' then
        r = r.err
      end
      r = {3, tostring(r)}
    end
    out[i] = r
  end
  return out
end
