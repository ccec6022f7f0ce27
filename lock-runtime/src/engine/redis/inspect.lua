-- What the lock records, changing nothing. One round trip.
-- KEYS[1] the lock: "<owner token>:<fencing number>[:<holder label>]" with a PX expiry, or a
-- bare token (a lock of an earlier version).
-- Returns {1, value, PTTL} for a lock; {0, '', -2} when free; {-1, '', PTTL} when the name holds
-- a value that is not one of our locks (someone else wrote it, or it has no expiry).
-- pcall: a value of another type answers WRONGTYPE, and is just as foreign.
local held = redis.pcall('GET', KEYS[1])
if not held then
  return {0, '', -2}
end
local pttl = redis.call('PTTL', KEYS[1])
if type(held) ~= 'string' or pttl < 0
    or not (string.find(held, '^%x+:%d+$') or string.find(held, '^%x+:%d+:')
      or (#held == 32 and string.find(held, '^%x+$'))) then
  return {-1, '', pttl}
end
return {1, held, pttl}
