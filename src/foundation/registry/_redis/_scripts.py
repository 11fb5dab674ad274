"""The server-side Lua scripts of ``RedisRegistry``: every write is one of them.

Layout under the prefix ``P = "{<namespace>}"`` (a Redis Cluster hash tag: a
namespace lives in one slot, so every script touches one slot only; ``P:log``
is passed as ``KEYS[1]`` so a cluster client routes the script there and ACL
key patterns such as ``~{ns}:*`` apply):

==========================  ====================================================
``P:head``   hash           encoded key -> JSON ``{"n": node, "a": agent, "t": time}``
``P:meta``   hash           encoded key -> metadata JSON (opaque to Lua)
``P:owner``  hash           encoded key -> owning node
``P:ix``     hash           encoded key -> JSON list of its index set names
``P:ix:<attr>:<json>`` set  encoded keys whose ``attr`` is (or contains) the value
``P:owned:<node>`` set      encoded keys owned by a node (what its lease covers)
``P:leases`` sorted set     node -> lease deadline (ms, Redis server clock)
``P:nodes``  hash           node -> JSON description (host, pid, started)
``P:ver``    string         change counter: every change record's version
``P:log``    stream         change records ``v, op, k, ...`` (``MAXLEN ~``)
``P:wake:<node>`` stream    wakes that node's tail reader (close, resync)
==========================  ====================================================

Times come from the Redis server (``TIME``), so node clocks never matter.
Metadata JSON is never decoded by Lua (its numbers are not Lua-safe).
"""

from __future__ import annotations

__all__ = ["HEARTBEAT", "REGISTER", "RELEASE", "SNAPSHOT", "UNREGISTER", "UPDATE"]

_PRELUDE = r"""
-- KEYS[1] is the stream P:log (a real key of the namespace: cluster routing
-- and ACL key patterns see it); P is the prefix before ':log'.
local P = string.sub(KEYS[1], 1, -5)
local MAXLEN = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Every change gets the next version and one stream record, in the same script
-- as the change itself: a reader never sees a change without its record.
-- `w` names the node whose API call wrote it ('' for reaps, re-asserts and
-- clean-ups): that node applies its own writes itself, its tail skips them.
local W = ''
local function log(...)
  local v = redis.call('INCR', P .. ':ver')
  redis.call('XADD', P .. ':log', 'MAXLEN', '~', MAXLEN, '*', 'v', v, 'w', W, ...)
  return v
end

local function lease_ok(node, now)
  local d = redis.call('ZSCORE', P .. ':leases', node)
  return d and tonumber(d) >= now
end

local function drop(ek, owner, why, dr, dc, ds)
  local head = redis.call('HGET', P .. ':head', ek)
  local ix = redis.call('HGET', P .. ':ix', ek)
  if ix then
    for _, name in ipairs(cjson.decode(ix)) do redis.call('SREM', name, ek) end
    redis.call('HDEL', P .. ':ix', ek)
  end
  redis.call('HDEL', P .. ':head', ek)
  redis.call('HDEL', P .. ':meta', ek)
  redis.call('HDEL', P .. ':owner', ek)
  redis.call('SREM', P .. ':owned:' .. owner, ek)
  return log('op', 'd', 'k', ek, 'n', owner, 'h', head, 'why', why, 'dr', dr, 'dc', dc, 'ds', ds)
end

local function put(ek, node, head, meta, ix)
  redis.call('HSET', P .. ':head', ek, head)
  redis.call('HSET', P .. ':meta', ek, meta)
  redis.call('HSET', P .. ':owner', ek, node)
  if ix ~= '' then
    redis.call('HSET', P .. ':ix', ek, ix)
    for _, name in ipairs(cjson.decode(ix)) do redis.call('SADD', name, ek) end
  end
  redis.call('SADD', P .. ':owned:' .. node, ek)
  return log('op', 'r', 'k', ek, 'h', head, 'm', meta)
end

-- Remove every entry of every node whose lease deadline has passed.
local function reap(now)
  local dead = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', '(' .. now)
  local n = 0
  for _, node in ipairs(dead) do
    local owned = P .. ':owned:' .. node
    for _, ek in ipairs(redis.call('SMEMBERS', owned)) do
      if redis.call('HGET', P .. ':owner', ek) == node then
        drop(ek, node, 'down', 'lease_expired', '', '')
        n = n + 1
      end
    end
    redis.call('DEL', owned)
    redis.call('ZREM', P .. ':leases', node)
    redis.call('HDEL', P .. ':nodes', node)
  end
  return n
end
"""

REGISTER = (
    _PRELUDE
    + r"""
-- ARGV: maxlen, node, ek, head, meta, ix, mode ('n' new, 'r' replace, 'a' reassert),
--       own_dead, writer
local node, ek, head, mode = ARGV[2], ARGV[3], ARGV[4], ARGV[7]
W = ARGV[9]
-- Our lease must exist (an expired one not yet reaped still counts: the next
-- heartbeat finds it gone and re-asserts). TIME is read only on a conflict.
if not redis.call('ZSCORE', P .. ':leases', node) then return {'NOLEASE'} end
local first, why, dr = 0, '', ''
local owner = redis.call('HGET', P .. ':owner', ek)
if owner then
  local now = now_ms()
  if mode == 'a' and owner == node and redis.call('HGET', P .. ':head', ek) == head then
    return {'SAME'}
  end
  if lease_ok(owner, now) then
    local own_dead = owner == node and ARGV[8] == '1'
    if own_dead then
      why = 'down'
    elseif mode == 'r' or (mode == 'a' and owner == node) then
      why = 'replaced'
    else
      return {'EXISTS', owner, redis.call('HGET', P .. ':head', ek),
              redis.call('HGET', P .. ':meta', ek)}
    end
  else
    -- the owner's lease expired but nobody reaped it yet: the key is free
    why, dr = 'down', 'lease_expired'
  end
  first = drop(ek, owner, why, dr, '', '')
end
local v = put(ek, node, head, ARGV[5], ARGV[6])
return {'OK', v, first, why, dr}
"""
)

UPDATE = (
    _PRELUDE
    + r"""
-- ARGV: maxlen, ek, meta, ix, writer.  Returns the entry's owner and head too, so
-- the writer can apply the update even if its mirror has not seen the entry yet.
local ek, ix = ARGV[2], ARGV[4]
W = ARGV[5]
local owner = redis.call('HGET', P .. ':owner', ek)
if not owner then return {'NOTREG'} end
local old = redis.call('HGET', P .. ':ix', ek)
if old then
  for _, name in ipairs(cjson.decode(old)) do redis.call('SREM', name, ek) end
  redis.call('HDEL', P .. ':ix', ek)
end
if ix ~= '' then
  redis.call('HSET', P .. ':ix', ek, ix)
  for _, name in ipairs(cjson.decode(ix)) do redis.call('SADD', name, ek) end
end
redis.call('HSET', P .. ':meta', ek, ARGV[3])
local v = log('op', 'u', 'k', ek, 'm', ARGV[3])
return {'OK', v, owner, redis.call('HGET', P .. ':head', ek)}
"""
)

UNREGISTER = (
    _PRELUDE
    + r"""
-- ARGV: maxlen, ek, why, dr, dc, ds, expect_head ('' = any), writer
local ek = ARGV[2]
W = ARGV[8]
local owner = redis.call('HGET', P .. ':owner', ek)
if not owner then return 0 end
if ARGV[7] ~= '' and redis.call('HGET', P .. ':head', ek) ~= ARGV[7] then return 0 end
return drop(ek, owner, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)

HEARTBEAT = (
    _PRELUDE
    + r"""
-- ARGV: maxlen, node, ttl_ms, info.  Reaps first: a lease that expired (the node
-- was frozen or cut off) is gone, and the caller learns it from `had`.
local node = ARGV[2]
local now = now_ms()
local reaped = reap(now)
local had = redis.call('ZSCORE', P .. ':leases', node)
redis.call('ZADD', P .. ':leases', now + tonumber(ARGV[3]), node)
redis.call('HSET', P .. ':nodes', node, ARGV[4])
if had then had = 1 else had = 0 end
return {had, reaped, now}
"""
)

RELEASE = (
    _PRELUDE
    + r"""
-- ARGV: maxlen, node.  A node leaving takes its registrations with it.
local node = ARGV[2]
local owned = P .. ':owned:' .. node
local n = 0
for _, ek in ipairs(redis.call('SMEMBERS', owned)) do
  if redis.call('HGET', P .. ':owner', ek) == node then
    drop(ek, node, 'unregistered', '', '', '')
    n = n + 1
  end
end
redis.call('DEL', owned)
redis.call('ZREM', P .. ':leases', node)
redis.call('HDEL', P .. ':nodes', node)
return n
"""
)

SNAPSHOT = (
    _PRELUDE
    + r"""
-- Everything a mirror needs, atomically: the version and stream id it is
-- current as of, and every entry.
local ver = redis.call('GET', P .. ':ver') or '0'
local last = redis.call('XREVRANGE', P .. ':log', '+', '-', 'COUNT', 1)
local lastid = '0-0'
if #last > 0 then lastid = last[1][1] end
return {ver, lastid, redis.call('HGETALL', P .. ':head'), redis.call('HGETALL', P .. ':meta')}
"""
)
