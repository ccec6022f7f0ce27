-- Take the lock if free; else report how long it stays busy. One round trip.
-- KEYS[1] lock key, KEYS[2] fencing counter (same {hash tag}, so the same Cluster slot)
-- ARGV[1] owner token, ARGV[2] lease in milliseconds
-- Returns {1, fencing number} when acquired, {0, PTTL of the current holder} when busy.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
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
return {0, redis.call('PTTL', KEYS[1])}
