-- Delete the lock whoever holds it, and wake its waiters as a release does. One round trip.
-- For operators, on a stuck holder: the holder learns it at its next renewal or release, whose
-- owner checks then find the lock gone.
-- KEYS[1] the lock (see inspect.lua), ARGV[1] its wake-up channel, ARGV[2] PUBLISH or SPUBLISH
-- (Cluster).
-- Returns {1, value, PTTL} of the deleted lock; {0, '', -2} when free; {-1, '', PTTL} for a value
-- that is not one of our locks, which is left alone: it is someone else's data.
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
redis.call('DEL', KEYS[1])
-- The payload of a deletion, as release.lua sends it: nothing is held any more.
redis.call(ARGV[2], ARGV[1], 0)
return {1, held, pttl}
