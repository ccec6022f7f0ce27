-- Take the lock if free, or, for a hand-over, from the holder named in ARGV[3]. One round trip.
-- KEYS[1] lock key, KEYS[2] fencing counter (same {hash tag}, so the same Cluster slot)
-- ARGV[1] owner token, ARGV[2] lease in milliseconds,
-- ARGV[3] (hand-over only) the releasing holder's token: the lock passes to ARGV[1] only if
-- ARGV[3] still holds it.
-- Returns {1, fencing number} when taken; {0, PTTL of the current holder} when busy;
-- {0, -2} for a hand-over whose giver no longer holds the lock (nothing changed).
local taken
if ARGV[3] then
  taken = redis.call('GET', KEYS[1]) == ARGV[3]
  if taken then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  end
else
  taken = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
end
if taken then
  local fence = redis.call('INCR', KEYS[2])
  if fence == 1 then
    -- A new counter (first use, or a server restarted without persistence) starts at the server
    -- clock in microseconds, so numbers stay above every number handed out before a restart as
    -- long as fewer than a million locks per second were taken and the clock did not jump back.
    local now = redis.call('TIME')
    fence = now[1] .. string.format('%06d', tonumber(now[2]))
    redis.call('SET', KEYS[2], fence)
    fence = tonumber(fence)
  end
  return {1, fence}
end
if ARGV[3] then
  return {0, -2}
end
return {0, redis.call('PTTL', KEYS[1])}
