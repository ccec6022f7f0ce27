-- Extend the lease only if ARGV[1] still owns the lock. One round trip per renewal.
-- KEYS[1] lock key ("<owner token>:<fencing number>[:<holder label>]")
-- ARGV[1] owner token, ARGV[2] lease in milliseconds
-- Returns 1 when extended, 0 when the lock was not ours any more.
local held = redis.call('GET', KEYS[1])
-- Tokens are fixed-width and random: a value that starts with ours is our lock.
if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
