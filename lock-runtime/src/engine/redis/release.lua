-- Release the lock only if ARGV[1] still owns it. One round trip.
-- KEYS[1] lock key ("<owner token>:<fencing number>[:<holder label>]")
-- ARGV[1] owner token, ARGV[2] milliseconds to keep it (0: delete now; > 0: hold_at_least's rest),
-- ARGV[3] the lock's wake-up channel, ARGV[4] how to wake: PUBLISH, or SPUBLISH on a Cluster (the
-- channel is in the lock's slot, so only that shard's subscribers hear it)
-- Returns 1 when released (or shortened), 0 when the lock was not ours any more.
local held = redis.call('GET', KEYS[1])
-- Tokens are fixed-width and random: a value that starts with ours is our lock.
if not held or string.sub(held, 1, #ARGV[1]) ~= ARGV[1] then
  return 0
end
local keep = tonumber(ARGV[2])
if keep > 0 then
  -- Kept for hold_at_least, but no longer anyone's: the token becomes zeros (still a lock, with
  -- its fence and label), so a late renewal or extension by the releaser finds it not its own.
  local rest = string.sub(held, #ARGV[1] + 1)
  redis.call('SET', KEYS[1], string.rep('0', #ARGV[1]) .. rest, 'XX', 'PX', keep)
else
  redis.call('DEL', KEYS[1])
end
-- Wake one waiter per process; after a shortening it learns the new, shorter expiry.
redis.call(ARGV[4], ARGV[3], keep)
return 1
