-- Take the lock if free, or, for a hand-over, from the holder named in ARGV[4]. One round trip.
-- KEYS[1] the lock, the only key: "<owner token>:<fencing number>:<holder label>" (or without
-- ":<holder label>" when the label is empty) with a PX expiry.
-- ARGV[1] owner token (32 hex digits), ARGV[2] lease in milliseconds, ARGV[3] holder label (any
-- text, possibly empty: it is the rest of the value after the second ':'),
-- ARGV[4] (hand-over only) the releasing holder's token: the lock passes to ARGV[1] only if
-- ARGV[4] still holds it.
-- Returns {1, fencing number} when taken; {0, PTTL of the current holder} when busy;
-- {-1, PTTL} when the name holds a value that is not one of our locks;
-- {0, -2} for a hand-over whose giver no longer holds the lock (nothing changed).
-- A lock ARGV[1] already holds is answered {1, its fencing number}, changing nothing: the Cluster
-- client sends a request again after a connection reset, and the first run may have taken it.
--
-- The fencing number is the server clock in microseconds, or for a hand-over the giver's number
-- + 1 when that is higher. No counter has to outlive the lock, and a server that forgot or went
-- back to an old state (restart, snapshot, FLUSHALL, eviction, a promoted replica) still hands
-- out greater numbers, as long as its clock is not behind the time the last one was handed out.
local now = redis.call('TIME')
local label = ARGV[3]
if label ~= '' then
  label = ':' .. label
end
if not ARGV[4] then
  -- The clock as a decimal string, built without string.format: this is the uncontended path,
  -- whose cost must not exceed a SET NX plus an INCR.
  local micros = now[2]
  if #micros < 6 then
    micros = string.rep('0', 6 - #micros) .. micros
  end
  local fence = now[1] .. micros
  if redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence .. label, 'NX', 'PX', ARGV[2]) then
    return {1, fence}
  end
  -- Busy. Only here, never on the free path, tell a held lock from a value someone else wrote;
  -- pcall because a value of another type answers WRONGTYPE, and is just as foreign. A bare
  -- 32-hex-digit token is a lock of an earlier version (one with a separate fence counter), held
  -- during a rolling upgrade: it is waited for like any other, and so is one without a label.
  local held = redis.pcall('GET', KEYS[1])
  if type(held) == 'string' and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
    return {1, tonumber(string.match(held, '^:(%d+)', #ARGV[1] + 1)) or 0}
  end
  local pttl = redis.call('PTTL', KEYS[1])
  if type(held) ~= 'string'
      or not (string.find(held, '^%x+:%d+$') or string.find(held, '^%x+:%d+:')
        or (#held == 32 and string.find(held, '^%x+$'))) then
    return {-1, pttl}
  end
  return {0, pttl}
end
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  return {1, tonumber(string.match(held, '^:(%d+)', #ARGV[1] + 1)) or 0}
end
if not held or string.sub(held, 1, #ARGV[4]) ~= ARGV[4] then
  return {0, -2}
end
-- The giver's number: the digits after its token, up to the label's ':' if there is one.
local given = tonumber(string.match(held, '^:(%d+)', #ARGV[4] + 1)) or 0
local fence = math.max(given + 1, now[1] * 1000000 + now[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', fence) .. label, 'PX', ARGV[2])
return {1, fence}
