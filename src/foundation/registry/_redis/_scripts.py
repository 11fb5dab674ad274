"""The server-side Lua scripts of ``RedisRegistry``: every write is one of them.

Layout under the prefix ``P = "{<namespace>}"`` (a Redis Cluster hash tag: a
namespace lives in one slot, so every script touches one slot only; ``P:log``
is passed as ``KEYS[1]`` so a cluster client routes the script there and ACL
key patterns such as ``~{ns}:*`` apply):

==========================  ====================================================
``P:head``   hash           encoded key -> JSON ``{"n": node, "a": agent, "t": time}``
``P:meta``   hash           encoded key -> metadata JSON, keys in the caller's order (opaque to Lua)
``P:owner``  hash           encoded key -> owning node
``P:at``     hash           encoded key -> ``"<stream id> <at_fp(head)>"``: its order
``P:ix``     hash           encoded key -> JSON list of its index set names
``P:ix:<attr>:<json>`` set  encoded keys whose ``attr`` is (or contains) the value
``P:owned:<node>`` set      encoded keys owned by a node (what its lease covers)
``P:leases`` sorted set     node -> lease deadline (ms, Redis server clock)
``P:lastbeat`` string       server time (ms) of the last successful heartbeat of any node
``P:healed`` string         a shift ``heal`` made in a ``REGISTER`` (ms), for a heartbeat (expires)
``P:nodes``  hash           node -> JSON description (host, pid, started)
``P:ver``    string         change counter: every change record's version
``P:log``    stream         change records ``v, op, k, ...`` (about MAXLEN versions)
``P:marks``  list           ``"<version> <stream id>"`` trim points of ``P:log``
``P:wake:<node>`` stream    wakes that node's tail reader (close, resync)
==========================  ====================================================

Times come from the Redis server (``TIME``, and stream ids, which follow it),
so node clocks never matter.
Metadata JSON is never decoded by Lua (its numbers are not Lua-safe).

Each script's ARGV is built by one frozen dataclass below (``RegisterArgs``,
...), whose fields are the ARGV entries in order; the Lua side names them in
the same order at its top. ``KEYS`` is always ``[P:log]``.

**The global-outage lease rule** (``heal``, run by ``HEARTBEAT``, ``REAP`` and
by a ``REGISTER`` that meets another node's lease). ``P:lastbeat`` is the server
time of the last successful heartbeat of *any* node. If more than
``grace_ms`` passed since then, no node could renew its lease: Redis was
read-only, frozen, out of memory, paused or unreachable for everyone, which
says nothing about whether the nodes are alive. So before reaping, every
lease deadline is pushed back by that gap (time during which nobody *could*
heartbeat does not count against anybody). A node that is really dead is
still reaped, ``gap`` later; a dead node while others heartbeat (no global
gap) is reaped within ``lease_ttl`` plus one heartbeat, as before.
A ``P:lastbeat`` more than ``grace_ms`` *ahead* of the server's time means its
clock went back: the same shift, negative, puts every deadline back on the
clock of now (``heal`` returns it, < 0).

The grace is that of the node running the script: with different
``lease_ttl`` on different nodes, a silence shorter than the judging node's
grace but longer than another node's lease is not taken for an outage, and the
other node's live agents are reaped (docs/redis.md, "Leases": give every node
of a namespace the same ``lease_ttl``).

**Failing cleanly.** A write rejected by an unhealthy server (``READONLY``,
``OOM``) fails at the script's first write, before anything changed: the
heartbeat's first write is ``SET P:lastbeat`` (a ``denyoom`` write), so a
server out of memory can never let a heartbeat reap (deletes are allowed
under OOM) without renewing anything.

**Reaps and releases in chunks.** A reap of expired leases and a closing
node's release drop at most ``REAP_CHUNK`` entries per script: ``HEARTBEAT``
reaps one chunk before it renews and says whether expired leases remain
(``more``); the node then runs ``REAP``, a chunk per script, until none does
(``Lease``), and ``close()`` runs ``RELEASE`` until its node owns nothing. A
lease (and the node's info) is forgotten with its last entry only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "HEARTBEAT",
    "REAP",
    "REAP_CHUNK",
    "REGISTER",
    "REGISTER_MANY",
    "RELEASE",
    "SNAPSHOT",
    "UNREGISTER",
    "UPDATE",
    "HeartbeatArgs",
    "ReapArgs",
    "RegisterArgs",
    "RegisterManyArgs",
    "ReleaseArgs",
    "SnapshotArgs",
    "UnregisterArgs",
    "UpdateArgs",
    "register_argv",
]

Arg = str | bytes | int

REAP_CHUNK = 1000
"""The most entries one script drops when it reaps an expired lease (``HEARTBEAT``,
``REAP``) or releases a closing node's (``RELEASE``). Redis serves no other client
while a script runs, and dropping an entry costs about 15-40 us of it (its hash
fields, index sets and ``'d'`` record; Redis 7.0.15 on a 2-core VM: the longest
chunk of a 100k or 200k reap or release took 17-39 ms; up to 75 us per entry on
a loaded VM), so a chunk holds Redis for tens of ms; the node runs chunk after
chunk, each a script of its own, until nothing is left (docs/redis.md, "Limits
at scale"). Read at each call (a test may lower it)."""


@dataclass(frozen=True, slots=True)
class RegisterArgs:
    """ARGV of ``REGISTER``, in field order.

    ``mode``: ``"n"`` new (``AlreadyRegistered`` if a live agent holds the key),
    ``"r"`` replace, ``"a"`` re-assert (this node's own registration, after its
    lease was lost or Redis restarted; it replaces another node's live
    registration only if that one was registered before it: see
    ``registered_before``). ``own_dead``: this node's previous agent
    under the key is dead (so replacing it is a ``down``, not a ``replaced``).
    ``writer``: the node whose API call this is (its tail skips the record), or
    ``""`` (re-asserts: every mirror applies them). ``grace_ms``: see ``heal``.
    ``since`` (re-asserts only; ``""``: none): a stream id up to
    which the re-asserting node has read the stream for deletes of its
    registrations; a key Redis lacks is written back only if no other node's
    delete of this registration (a reap of an expired lease aside) lies past it
    (reply ``{'GONE'}``): see ``Lease._reassert``. ``at`` (re-asserts only;
    ``""``: unknown): the stream id of the record that first registered this
    registration (``P:at``), which orders it against another node's claim.
    Neither is sent when both are ``""``.
    """

    maxlen: str
    node: str
    ek: str
    head: str
    meta: bytes
    ix: str
    mode: Literal["n", "r", "a"]
    own_dead: bool
    writer: str
    grace_ms: int
    since: str = ""
    at: str = ""

    def argv(self) -> list[Arg]:
        out: list[Arg] = [
            self.maxlen,
            self.node,
            self.ek,
            self.head,
            self.meta,
            self.ix,
            self.mode,
            "1" if self.own_dead else "0",
            self.writer,
            self.grace_ms,
        ]
        if self.since or self.at:
            out += (self.since, self.at)
        return out


def register_argv(
    *,
    maxlen: str,
    node: str,
    ek: str,
    head: str,
    meta: bytes,
    ix: str,
    mode: Literal["n", "r", "a"],
    own_dead: bool,
    writer: str,
    grace_ms: int,
) -> list[Arg]:
    """``RegisterArgs(...).argv()`` of the same arguments, without building the
    dataclass: the hot path of ``register``."""
    return [maxlen, node, ek, head, meta, ix, mode, "1" if own_dead else "0", writer, grace_ms]


@dataclass(frozen=True, slots=True)
class RegisterManyArgs:
    """ARGV of ``REGISTER_MANY``: the fields shared by every item (``mode`` as in
    :class:`RegisterArgs`), ``own_dead`` of every item as one string of ``"0"``/
    ``"1"``, the item width (3, or 4 if any item has an ``ix``), then each
    item's ``ek, head, meta`` (and ``ix`` at width 4), flattened."""

    maxlen: str
    node: str
    writer: str
    grace_ms: int
    mode: Literal["n", "r"]
    own_dead: str
    items: Sequence[tuple[str, str, bytes, str]]

    def argv(self) -> list[Arg]:
        items = self.items
        indexed = any(item[3] for item in items)
        out: list[Arg] = [
            self.maxlen,
            self.node,
            self.writer,
            self.grace_ms,
            self.mode,
            self.own_dead,
            4 if indexed else 3,
        ]
        if indexed:
            for item in items:
                out += item
        else:
            for ek, head, meta, _ in items:
                out += (ek, head, meta)
        return out


@dataclass(frozen=True, slots=True)
class UpdateArgs:
    """ARGV of ``UPDATE``, in field order."""

    maxlen: str
    ek: str
    meta: bytes
    ix: str
    writer: str

    def argv(self) -> list[Arg]:
        return [self.maxlen, self.ek, self.meta, self.ix, self.writer]


@dataclass(frozen=True, slots=True)
class UnregisterArgs:
    """ARGV of ``UNREGISTER``, in field order.

    ``why``: ``"unregistered"`` or ``"down"``; ``down_reason``, ``exit_code``,
    ``signal``: the ``Down`` shipped to other nodes (``""`` when none);
    ``expect_head``: delete only that registration (``""``: whatever holds the key;
    if Redis lost the head, only the writer's own entry matches).
    """

    maxlen: str
    ek: str
    why: str
    down_reason: str
    exit_code: str
    signal: str
    expect_head: str
    writer: str

    def argv(self) -> list[Arg]:
        return [
            self.maxlen,
            self.ek,
            self.why,
            self.down_reason,
            self.exit_code,
            self.signal,
            self.expect_head,
            self.writer,
        ]


@dataclass(frozen=True, slots=True)
class HeartbeatArgs:
    """ARGV of ``HEARTBEAT``, in field order (``info``: JSON describing the node;
    ``chunk``: at most this many entries reaped, see ``REAP_CHUNK``)."""

    maxlen: str
    node: str
    ttl_ms: int
    info: str
    grace_ms: int
    chunk: int

    def argv(self) -> list[Arg]:
        return [self.maxlen, self.node, self.ttl_ms, self.info, self.grace_ms, self.chunk]


@dataclass(frozen=True, slots=True)
class ReapArgs:
    """ARGV of ``REAP``, in field order."""

    maxlen: str
    grace_ms: int
    chunk: int

    def argv(self) -> list[Arg]:
        return [self.maxlen, self.grace_ms, self.chunk]


@dataclass(frozen=True, slots=True)
class ReleaseArgs:
    """ARGV of ``RELEASE``, in field order."""

    maxlen: str
    node: str
    chunk: int

    def argv(self) -> list[Arg]:
        return [self.maxlen, self.node, self.chunk]


@dataclass(frozen=True, slots=True)
class SnapshotArgs:
    """ARGV of ``SNAPSHOT``, in field order."""

    maxlen: str

    def argv(self) -> list[Arg]:
        return [self.maxlen]


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
-- Trimming keeps about MAXLEN *versions* on the stream (a bulk record holds
-- many): P:marks lists "<first version> <stream id>" of every 64th record and of
-- every bulk record, oldest first; mark() adds one, then drops the records older
-- than the newest mark at least MAXLEN versions old (XTRIM MINID ~, whole stream
-- nodes). Trimming at marks only keeps the per-write cost down (a trim costs as
-- much as the rest of an XADD); the cap is approximate anyway.
local function mark(first, id, now_v)
  local k = P .. ':marks'
  -- A counter that went back (P:ver lost) leaves marks of higher versions, which
  -- would hold back every trim until it passed them again: forget them.
  local newest = redis.call('LINDEX', k, -1)
  if newest and tonumber(string.sub(newest, 1, string.find(newest, ' ', 1, true) - 1)) >= first then
    redis.call('DEL', k)
  end
  redis.call('RPUSH', k, first .. ' ' .. id)
  local cut
  local m = redis.call('LINDEX', k, 0)
  while m do
    local sp = string.find(m, ' ', 1, true)
    if tonumber(string.sub(m, 1, sp - 1)) > now_v - tonumber(MAXLEN) then break end
    cut = string.sub(m, sp + 1)
    redis.call('LPOP', k)
    m = redis.call('LINDEX', k, 0)
  end
  if cut then redis.call('XTRIM', P .. ':log', 'MINID', '~', cut) end
end

-- Returns the record's version and stream id (callers that need only the
-- version take the first value).
local W = ''
local function log(...)
  local v = redis.call('INCR', P .. ':ver')
  local id = redis.call('XADD', P .. ':log', '*', 'v', v, 'w', W, ...)
  if v % 64 == 0 then mark(v, id, v) end
  return v, id
end

local function lease_ok(node, now)
  local d = redis.call('ZSCORE', P .. ':leases', node)
  return d and tonumber(d) >= now
end

-- Every value read from a hash may be missing (false) when Redis lost that key
-- (an allkeys-* eviction, a DEL by mistake) while its siblings remain: nothing
-- read is passed on unchecked, and each script reads before it writes (Redis
-- does not undo a script's writes when it fails midway).

-- The node holding `ek`: the owner hash's, or, when Redis lost that hash but
-- not the head, the node the head names (nil: the key is free).
local function owner_of(ek)
  local owner = redis.call('HGET', P .. ':owner', ek)
  if owner then return owner end
  local head = redis.call('HGET', P .. ':head', ek)
  if not head then return nil end
  local ok, h = pcall(cjson.decode, head)
  if ok and type(h) == 'table' and type(h.n) == 'string' then return h.n end
  return nil
end

-- Another node deleted (unregistered, replaced) `node`'s registration `head` of
-- `ek` past stream id `since`: a delete record of it written by another node,
-- not a reap of an expired lease (the registration lives on: re-asserted). A
-- lost head was recorded as '' with the owner in 'n'.
-- Cost: a recovery re-asserts every registration Redis lacks, one script each,
-- and each writes a record past `since`: scanning from `since` in each was
-- quadratic (4000 lost keys: 36 s of Redis CPU, every client timed out). So the
-- scan's progress is kept in one hash per node (P:rescan:<node>: 's' the since,
-- 'u' the last id scanned, a field "ek\nhead" -- head '' for a lost one -- per
-- delete found), and each script scans only what came after 'u'. The hash
-- expires on its own (60 s); lost (evicted) or of another since, it restarts.
local function deleted_since(ek, node, head, since)
  local k = P .. ':rescan:' .. node
  local from = since
  if redis.call('HGET', k, 's') == since then
    from = redis.call('HGET', k, 'u') or since
  else
    redis.call('DEL', k)
  end
  local last = from
  for _, r in ipairs(redis.call('XRANGE', P .. ':log', '(' .. from, '+')) do
    last = r[1]
    local f, t = r[2], {}
    for i = 1, #f, 2 do t[f[i]] = f[i + 1] end
    if t.op == 'd' and t.k and t.h and t.n == node and t.w ~= node and t.dr ~= 'lease_expired' then
      redis.call('HSET', k, t.k .. '\n' .. t.h, '1')
    end
  end
  redis.call('HSET', k, 's', since, 'u', last)
  redis.call('PEXPIRE', k, 60000)
  return redis.call('HEXISTS', k, ek .. '\n' .. head) == 1
      or redis.call('HEXISTS', k, ek .. '\n') == 1
end

local function drop(ek, owner, why, dr, dc, ds)
  -- A lost head is recorded as '' (XADD takes strings only): readers take it as
  -- "whatever registration `owner` held".
  local head = redis.call('HGET', P .. ':head', ek) or ''
  local ix = redis.call('HGET', P .. ':ix', ek)
  if ix then
    for _, name in ipairs(cjson.decode(ix)) do redis.call('SREM', name, ek) end
    redis.call('HDEL', P .. ':ix', ek)
  end
  redis.call('HDEL', P .. ':head', ek)
  redis.call('HDEL', P .. ':meta', ek)
  redis.call('HDEL', P .. ':owner', ek)
  redis.call('HDEL', P .. ':at', ek)
  redis.call('SREM', P .. ':owned:' .. owner, ek)
  return log('op', 'd', 'k', ek, 'n', owner, 'h', head, 'why', why, 'dr', dr, 'dc', dc, 'ds', ds)
end

-- Which registration a P:at value belongs to: the first 8 hex digits of the
-- SHA-1 of its head. Race: a node of an older version (a rolling upgrade)
-- neither deletes P:at when it drops a registration nor writes it when it
-- registers, so P:at may be another registration's (an earlier one's, whose
-- place in the order is earlier): a value whose fingerprint is not the current
-- head's is ignored (at_of).
local function at_fp(head)
  return string.sub(redis.sha1hex(head), 1, 8)
end

-- The stream id in P:at of the registration `head` of `ek` (nil: unknown,
-- lost, written for another registration, or by an older version).
local function at_of(ek, head)
  local v = redis.call('HGET', P .. ':at', ek)
  if not v or not head then return nil end
  local id, fp = string.match(v, '^(%d+%-%d+) (%x+)$')
  if id and fp == at_fp(head) then return id end
  return nil
end

-- `at`: the stream id of the record that first registered this registration
-- (a re-assert writing it back keeps its place in the order: P:at), or
-- nil/'' for a new one (this record's id).
local function put(ek, node, head, meta, ix, at)
  redis.call('HSET', P .. ':head', ek, head)
  redis.call('HSET', P .. ':meta', ek, meta)
  redis.call('HSET', P .. ':owner', ek, node)
  if ix ~= '' then
    redis.call('HSET', P .. ':ix', ek, ix)
    for _, name in ipairs(cjson.decode(ix)) do redis.call('SADD', name, ek) end
  end
  redis.call('SADD', P .. ':owned:' .. node, ek)
  local v, id = log('op', 'r', 'k', ek, 'h', head, 'm', meta)
  if not at or at == '' then at = id end
  redis.call('HSET', P .. ':at', ek, at .. ' ' .. at_fp(head))
  return v, id
end

-- Replace the metadata (and index sets) of an existing entry; logs a 'u' record.
local function set_meta(ek, meta, ix)
  local old = redis.call('HGET', P .. ':ix', ek)
  if old then
    for _, name in ipairs(cjson.decode(old)) do redis.call('SREM', name, ek) end
    redis.call('HDEL', P .. ':ix', ek)
  end
  if ix ~= '' then
    redis.call('HSET', P .. ':ix', ek, ix)
    for _, name in ipairs(cjson.decode(ix)) do redis.call('SADD', name, ek) end
  end
  redis.call('HSET', P .. ':meta', ek, meta)
  return log('op', 'u', 'k', ek, 'm', meta)
end

-- The global-outage rule (see the module docstring): if no node renewed its
-- lease for more than grace ms, push every deadline back by that gap before
-- anyone reaps. Returns the gap applied (0: none).
-- A P:lastbeat more than grace ms AHEAD of now means the server's clock went
-- back (Redis restarted on a host whose clock is behind, a clock stepped
-- back): every deadline was set by the clock that ran ahead, so a dead node's
-- lease would outlive it by that much. The same shift, negative, puts every
-- deadline back on the clock of now (a live node keeps the time it had left).
-- Returns that shift too (< 0).
local function heal(now, grace)
  local last = tonumber(redis.call('GET', P .. ':lastbeat') or '')
  if not last or math.abs(now - last) <= grace then return 0 end
  local gap = now - last
  local all = redis.call('ZRANGE', P .. ':leases', 0, -1, 'WITHSCORES')
  -- First write of the script: on an unhealthy server it fails here, cleanly.
  redis.call('SET', P .. ':lastbeat', now)
  -- No lease at all: every node left (cleanly, or reaped), so nothing was
  -- stranded by an outage and nothing is reported (a node starting in a
  -- namespace its predecessors closed is no global outage).
  if #all == 0 then return 0 end
  for i = 1, #all, 2 do
    redis.call('ZADD', P .. ':leases', tonumber(all[i + 1]) + gap, all[i])
  end
  return gap
end

-- heal, run by a script other than a heartbeat (a REGISTER meeting another
-- node's lease, a REAP). Race: the first script after the server's clock moved
-- may be this one: the shift is applied here and the next heartbeat finds no
-- gap, so it is left in P:healed for that heartbeat to report (its WARNING). It
-- expires (ten graces, a minute at least): if no node heartbeats by then (all
-- closed), a node started later must not report an old shift.
local function heal_noted(now, grace)
  local gap = heal(now, grace)
  if gap ~= 0 then
    redis.call('SET', P .. ':healed', gap, 'PX', math.max(60000, 10 * grace))
  end
end
"""

# One registration (the body of REGISTER and of every item of REGISTER_MANY).
_REGISTER_ONE = r"""
-- Stream id `a` comes strictly before `b` (nil: either is not an id).
local function id_before(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  if not (am and bm) then return nil end
  am, bm = tonumber(am), tonumber(bm)
  if am ~= bm then return am < bm end
  return tonumber(as) < tonumber(bs)
end

-- The claim on `ek` in Redis was registered strictly before the registration
-- `head`, first registered by the record `at`: by the stream ids of the two
-- registration records (P:at), an order the Redis server made. Only when one
-- is unknown (P:at lost, written for another registration or by an older
-- version: at_of; or of another history of the stream, below) by the heads'
-- registration times 't' (node clocks); false when neither can be read.
local function registered_before(ek, head, at)
  local theirs = redis.call('HGET', P .. ':head', ek)
  local theirs_at = at_of(ek, theirs)
  if theirs_at and at and at ~= '' then
    -- Stream ids are ordered within one history of the stream only: Redis
    -- restarted empty (or lost P:log) on a host whose clock is behind starts
    -- a new history whose ids are below the old one's, so a registration made
    -- after ours can get the smaller id. An id past the stream's last record
    -- is of another history (ours, remembered from before; theirs, P:log lost
    -- since): not comparable. One call, on a conflict only.
    local last = redis.call('XREVRANGE', P .. ':log', '+', '-', 'COUNT', 1)[1]
    if last and not id_before(last[1], at) and not id_before(last[1], theirs_at) then
      local before = id_before(theirs_at, at)
      if before ~= nil then return before end
    end
  end
  if not theirs then return false end
  local ok1, a = pcall(cjson.decode, theirs)
  local ok2, b = pcall(cjson.decode, head)
  if not (ok1 and ok2 and type(a) == 'table' and type(b) == 'table') then return false end
  return type(a.t) == 'number' and type(b.t) == 'number' and a.t < b.t
end

local function register_one(node, ek, head, meta, ix, mode, own_dead_arg, grace, since, at)
  -- Our lease must exist (an expired one not yet reaped, or half reaped, still
  -- counts: the next heartbeat finds it expired and re-asserts). TIME is read only on a conflict.
  if not redis.call('ZSCORE', P .. ':leases', node) then return {'NOLEASE'} end
  local first, why, dr = 0, '', ''
  local owner = owner_of(ek)
  if owner then
    local now = now_ms()
    local held = mode == 'a' and owner == node and redis.call('HGET', P .. ':head', ek)
    if held == head then
      -- Our registration is still there. If its metadata is older than ours (a
      -- write Redis lost, say in a failover), bring it up to date: an update, not
      -- a new registration (no other node must see a replacement). Our owned set
      -- (the lease's reaper reads it) and the owner hash may have been lost alone.
      local owned = P .. ':owned:' .. node
      if redis.call('SISMEMBER', owned, ek) == 0 then redis.call('SADD', owned, ek) end
      if redis.call('HEXISTS', P .. ':owner', ek) == 0 then
        redis.call('HSET', P .. ':owner', ek, node)
      end
      -- Its place in the order: P:at's, or (lost, or another registration's)
      -- ours written back; returned so that a node whose register reply was
      -- lost learns it (Lease._reassert_replies).
      local id = at_of(ek, head)
      if not id and at and at ~= '' then
        redis.call('HSET', P .. ':at', ek, at .. ' ' .. at_fp(head))
        id = at
      end
      if redis.call('HGET', P .. ':meta', ek) == meta then return {'SAME', id or ''} end
      local v, rid = set_meta(ek, meta, ix)
      return {'UPDATED', v, rid, id or ''}
    end
    if mode == 'a' and owner == node and not held then
      -- Ours (the owner hash says so), but Redis lost its head: write the whole
      -- registration back (not a replacement: nothing is dropped).
      local old = redis.call('HGET', P .. ':ix', ek)
      if old then
        for _, name in ipairs(cjson.decode(old)) do redis.call('SREM', name, ek) end
        redis.call('HDEL', P .. ':ix', ek)
      end
      local v, id = put(ek, node, head, meta, ix, at)
      return {'OK', v, 0, '', '', id}
    end
    -- Never take a key from a node that only looks dead because nobody could
    -- renew a lease (a global outage): heal before judging its lease.
    if owner ~= node then heal_noted(now, grace) end
    if lease_ok(owner, now) then
      local own_dead = owner == node and own_dead_arg == '1'
      if own_dead then
        why = 'down'
      elseif mode == 'r' or (mode == 'a' and owner == node) then
        why = 'replaced'
      elseif mode == 'a' and registered_before(ek, head, at) then
        -- Race: Redis came back older (a snapshot, a failover to a replica that
        -- missed writes) with a claim of `owner` that was deleted before our
        -- registration was made; our registration was lost. Whether `owner`
        -- still backs it is known only to `owner` (its resync deletes it), and
        -- yielding to it lost our live key for good. A claim registered before
        -- ours cannot be the one that keeps the key (the key was free when ours
        -- was registered), so ours replaces it; one script decides, so only one
        -- of the two holds the key, and `owner` learns it from this delete record
        -- (its tail, or its own re-assert, which then gets EXISTS). Limits: when
        -- both nodes lost their leases in turn (ours reaped, `owner` registered,
        -- `owner` reaped, ours re-asserted), `owner`'s re-assert takes the key
        -- from ours the same way (still one holder; our live agent is told
        -- "replaced"). The order is the server's (stream ids: P:at), never the
        -- nodes' clocks: with 't' (node wall clocks), a node whose clock was a
        -- few seconds ahead, frozen past its lease and reaped, took back on
        -- thawing a key another node had registered meanwhile (a live agent's).
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
  elseif mode == 'a' and since and since ~= '' and deleted_since(ek, node, head, since) then
    -- Free because another node unregistered it after the re-asserting node's
    -- last look at the stream (Lease._reassert): writing it back would undo that.
    return {'GONE'}
  end
  local v, id = put(ek, node, head, meta, ix, at)
  return {'OK', v, first, why, dr, id}
end
"""

REGISTER = (
    _PRELUDE
    + _REGISTER_ONE
    + r"""
-- ARGV (RegisterArgs): maxlen, node, ek, head, meta, ix, mode ('n' new,
--   'r' replace, 'a' reassert), own_dead, writer, grace_ms, since, at
--   (these two: re-asserts only, '' when unknown; not sent otherwise).  Replies {'OK',
--   version, version of the record that dropped a previous holder (0: none),
--   why, down reason, stream id of the registration record}, or {'EXISTS',
--   owner, head, meta}, {'NOLEASE'}, {'SAME', at}, {'UPDATED', version, id, at}
--   (at: the stream id that orders the registration, '' if unknown), or
--   {'GONE'} (a re-assert, with since, of a key another node deleted past it).
W = ARGV[9]
return register_one(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
                    tonumber(ARGV[10]), ARGV[11], ARGV[12])
"""
)

REGISTER_MANY = (
    _PRELUDE
    + _REGISTER_ONE
    + r"""
-- ARGV (RegisterManyArgs): maxlen, node, writer, grace_ms, mode, own_dead (one
--   '0'/'1' per item), width (3, or 4 when some item has index sets), then
--   `width` per item: ek, head, meta[, ix] (distinct keys).  One reply per item,
--   in order: an item whose key is held (an owner field, or a head: owner_of)
--   goes through register_one (it may fail
--   alone) and gets exactly REGISTER's reply; a free key is written in bulk and
--   its reply is just its version (an integer: registered, nothing displaced).
--   Then one more element: {first, last, id} of the bulk record ({0, 0, ''}
--   when there is none).
--   The free keys are written with one HSET per hash, one SADD, one INCRBY and
--   ONE change record for all of them (op 'R', described below), so the per-key
--   work is the hash fields and the index sets, nothing else.
local node, grace, mode, dead = ARGV[2], tonumber(ARGV[4]), ARGV[5], ARGV[6]
local width = tonumber(ARGV[7])
W = ARGV[3]
local n = (#ARGV - 7) / width
local out = {}
if not redis.call('ZSCORE', P .. ':leases', node) then
  for i = 1, n do out[i] = {'NOLEASE'} end
  out[n + 1] = {0, 0, ''}
  return out
end
local eks = {}
for i = 1, n do eks[i] = ARGV[8 + (i - 1) * width] end
local owners = redis.call('HMGET', P .. ':owner', unpack(eks))
-- A key is held as register_one judges it (owner_of): Redis may have lost its
-- owner field but not its head (another node's live registration). So the heads
-- of the keys the owner hash lacks are read too: ONE more call for the whole
-- chunk (none when every key has an owner); a key with a head goes through
-- register_one, which reads its owner from the head.
local lacking = {}
for i = 1, n do
  if not owners[i] then lacking[#lacking + 1] = eks[i] end
end
if #lacking > 0 then
  local heads_of = redis.call('HMGET', P .. ':head', unpack(lacking))
  local j = 0
  for i = 1, n do
    if not owners[i] then
      j = j + 1
      if heads_of[j] then owners[i] = true end
    end
  end
end
local heads, metas, owns, owned, ixs, parts = {}, {}, {}, {}, {}, {}
local m, x = 0, 0
for i = 1, n do
  local b = 8 + (i - 1) * width
  local ek = eks[i]
  local ix = ''
  if width == 4 then ix = ARGV[b + 3] end
  if owners[i] then
    out[i] = register_one(node, ek, ARGV[b + 1], ARGV[b + 2], ix, mode,
                          string.sub(dead, i, i), grace)
  else
    m = m + 1
    local h, me = 2 * m, 3 * m
    heads[h - 1], heads[h] = ek, ARGV[b + 1]
    metas[h - 1], metas[h] = ek, ARGV[b + 2]
    owns[h - 1], owns[h] = ek, node
    owned[m] = ek
    parts[me - 2], parts[me - 1], parts[me] = ek, ARGV[b + 1], ARGV[b + 2]
    if ix ~= '' then
      x = x + 2
      ixs[x - 1], ixs[x] = ek, ix
    end
    out[i] = i  -- its version, once known (below)
  end
end
if m == 0 then
  out[n + 1] = {0, 0, ''}
  return out
end
-- The first write (denyoom): READONLY or OOM fail here, before anything of the
-- free keys changed.
redis.call('HSET', P .. ':head', unpack(heads))
redis.call('HSET', P .. ':meta', unpack(metas))
redis.call('HSET', P .. ':owner', unpack(owns))
if x > 0 then
  redis.call('HSET', P .. ':ix', unpack(ixs))
  for j = 1, x, 2 do
    for _, name in ipairs(cjson.decode(ixs[j + 1])) do redis.call('SADD', name, ixs[j]) end
  end
end
redis.call('SADD', P .. ':owned:' .. node, unpack(owned))
local v = redis.call('INCRBY', P .. ':ver', m) - m
-- One record for the m free keys: versions v+1 .. v+m, in payload order.
local id = redis.call('XADD', P .. ':log', '*', 'v', v + 1, 'w', W, 'op', 'R', 'c', m,
                      'p', table.concat(parts, '\n'))
-- Each free key's place in the order (see put): this record.
local ats = {}
for j = 1, m do ats[2 * j - 1], ats[2 * j] = owned[j], id .. ' ' .. at_fp(heads[2 * j]) end
redis.call('HSET', P .. ':at', unpack(ats))
mark(v + 1, id, v + m)
local first = v + 1
for i = 1, n do
  if type(out[i]) == 'number' then
    v = v + 1
    out[i] = v
  end
end
out[n + 1] = {first, v, id}
return out
"""
)
"""The bulk record ``op 'R'`` of ``REGISTER_MANY``: fields ``v`` (the first
version), ``w``, ``c`` (count) and ``p``: ``ek, head, meta`` of each key joined
by ``"\\n"`` (none of them can hold a raw newline: compact JSON escapes it).
Item ``j`` (from 0) is the registration record ``op 'r'`` of version ``v + j``.
A reader expands it with ``_shared.expand_record``."""

UPDATE = (
    _PRELUDE
    + r"""
-- ARGV (UpdateArgs): maxlen, ek, meta, ix, writer.  Returns the entry's owner and
-- head too, so the writer can apply the update even if its mirror has not seen it.
local ek, meta, ix = ARGV[2], ARGV[3], ARGV[4]
W = ARGV[5]
local owner = owner_of(ek)
if not owner then return {'NOTREG'} end
local v = set_meta(ek, meta, ix)
return {'OK', v, owner, redis.call('HGET', P .. ':head', ek)}
"""
)

UNREGISTER = (
    _PRELUDE
    + r"""
-- ARGV (UnregisterArgs): maxlen, ek, why, down_reason, exit_code, signal,
--   expect_head ('' = any), writer
local ek, why, dr, dc, ds, expect = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
W = ARGV[8]
local owner = owner_of(ek)
if not owner then return 0 end
if expect ~= '' then
  local head = redis.call('HGET', P .. ':head', ek)
  -- A lost head (false) matches only the owner's own delete of its dead agent
  -- (writer = owner: it flushes that delete before registering the key again,
  -- so what it owns under the key is that agent's registration).
  if head ~= expect and (head or owner ~= W) then return 0 end
end
return drop(ek, owner, why, dr, dc, ds)
"""
)

_FORGET_NODE = r"""
-- Drop up to `budget` (>= 1) of the entries `node` still owns (as `why`, with
-- `down_reason`); once it owns none, forget the node too: its lease and info
-- (its owned set went with its last member). Returns how many entries went, how
-- many members were looked at (the budget spent), and whether the node is
-- forgotten (false: entries remain, for the next chunk).
-- Chunks (REAP_CHUNK): Redis serves nobody while a script runs, and one script
-- over 100k entries held it for seconds. SRANDMEMBER picks the chunk (O(budget),
-- not a walk of the set); a member is removed from the set whatever happens to
-- it, so every chunk makes progress. The lease is forgotten only with the last
-- entry: a node half reaped stays expired in P:leases, so whichever node reaps
-- next finishes it.
-- Race: two nodes may reap the same node at once (or it releases while being
-- reaped). Scripts run one at a time and each re-checks owner_of as of now: a
-- key another chunk already dropped, or another node took since, is only
-- removed from the set.
local function forget_node(node, why, down_reason, budget)
  local owned = P .. ':owned:' .. node
  local n = 0
  local eks = redis.call('SRANDMEMBER', owned, budget)
  for _, ek in ipairs(eks) do
    if owner_of(ek) == node then
      drop(ek, node, why, down_reason, '', '')
      n = n + 1
    else
      redis.call('SREM', owned, ek)
    end
  end
  if redis.call('EXISTS', owned) == 1 then return n, #eks, false end
  redis.call('ZREM', P .. ':leases', node)
  redis.call('HDEL', P .. ':nodes', node)
  return n, #eks, true
end

"""
"""``forget_node``: shipped only with the scripts that use it (every script runs
its whole text)."""

_REAP = (
    _FORGET_NODE
    + r"""
-- Remove at most `budget` entries of the nodes whose lease deadline passed
-- before `now`, the longest expired first (a node with nothing left costs one).
-- Returns how many entries went.
local function reap(now, budget)
  local n = 0
  local dead = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', '(' .. now,
                          'LIMIT', 0, budget)
  for _, node in ipairs(dead) do
    if budget <= 0 then break end
    local dropped, used = forget_node(node, 'down', 'lease_expired', budget)
    n = n + dropped
    budget = budget - math.max(used, 1)
  end
  return n
end

-- 1 if a lease that expired before `now` is still there (reaping left to do).
local function expired_left(now)
  local d = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', '(' .. now, 'LIMIT', 0, 1)
  if #d > 0 then return 1 end
  return 0
end

"""
)
"""``reap``: only ``HEARTBEAT`` and ``REAP`` reap (every script runs its whole
text, so the others leave it out)."""

HEARTBEAT = (
    _PRELUDE
    + _REAP
    + r"""
-- ARGV (HeartbeatArgs): maxlen, node, ttl_ms, info, grace_ms, chunk.  Heals (the
-- global-outage rule), then reaps at most `chunk` entries of expired leases (the
-- node was frozen or cut off while others heartbeated), then renews our lease.
-- Replies {had, reaped, now, gap (this heal's, else one a REGISTER or a REAP
-- applied since the last heartbeat: P:healed), the change counter (P:ver) before
-- any reap, more}: a counter below a version the caller has seen means Redis
-- went back to older data in place (DEBUG RELOAD, SWAPDB), which cuts no
-- connection; `more` 1: expired leases remain, and the caller goes on with REAP,
-- a chunk per script, so the renewal here never waits behind a long reap.
local node, ttl, info, grace = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local chunk = tonumber(ARGV[6])
local ver = tonumber(redis.call('GET', P .. ':ver') or '0') or 0
local now = now_ms()
local gap = heal(now, grace)
-- The first write (denyoom): READONLY or OOM fail the script here, before any
-- reap. Only a successful heartbeat moves P:lastbeat.
redis.call('SET', P .. ':lastbeat', now)
local healed = redis.call('GET', P .. ':healed')
if healed then
  redis.call('DEL', P .. ':healed')
  if gap == 0 then gap = tonumber(healed) or 0 end
end
-- `had`: our lease held at `now` (after the heal), read BEFORE the reap. An
-- expired lease of ours is reaped like any other, before the renewal below (as
-- when a reap was one script): its entries go and `had` 0 makes the node
-- re-assert them. Race: with more than `chunk` of them (or another node's reap
-- of us half done), only part go before the renewal makes the lease live again,
-- so no chunk after touches the rest (each re-reads the deadlines); read after
-- the reap, `had` would see the lease the partial reap keeps and say 1, and the
-- dropped entries would stay lost until the tail's own reading of their records.
local had = lease_ok(node, now) and 1 or 0
local reaped = reap(now, chunk)
redis.call('ZADD', P .. ':leases', now + ttl, node)
redis.call('HSET', P .. ':nodes', node, info)
return {had, reaped, now, gap, ver, expired_left(now)}
"""
)

REAP = (
    _PRELUDE
    + _REAP
    + r"""
-- ARGV (ReapArgs): maxlen, grace_ms, chunk.  The next chunk of a reap a
-- HEARTBEAT (or the previous REAP) left unfinished: at most `chunk` entries.
-- Replies {reaped, more} (as HEARTBEAT's).
-- Heals first, as REGISTER does: the node runs chunk after chunk, and Redis may
-- have been unreachable for everyone between two of them (a global outage):
-- leases nobody could renew are not reaped for it. No P:lastbeat is moved
-- otherwise (that is a heartbeat's), so the first write is a drop's (a delete,
-- which an OOM server lets through): only a node whose heartbeat just succeeded
-- runs REAP, and a silence longer than the grace is healed first (its SET,
-- denyoom, then fails cleanly), so the leases it reaps expired while
-- heartbeats succeeded.
local grace, chunk = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
heal_noted(now, grace)
local reaped = reap(now, chunk)
return {reaped, expired_left(now)}
"""
)

RELEASE = (
    _PRELUDE
    + _FORGET_NODE
    + r"""
-- ARGV (ReleaseArgs): maxlen, node, chunk.  A node leaving takes its
-- registrations with it, at most `chunk` per script (close() calls it until
-- done): replies {how many went, 1 once none is left and the lease and info
-- are gone too (else 0)}.
local n, _, done = forget_node(ARGV[2], 'unregistered', '', tonumber(ARGV[3]))
if done then return {n, 1} end
return {n, 0}
"""
)

# Pure reads, and must stay so: run by ``_readscript.ReadScript``, which on
# Redis >= 7 declares it ``no-writes`` (served during a write pause; a write in
# it would then fail).
SNAPSHOT = (
    _PRELUDE
    + r"""
-- ARGV (SnapshotArgs): maxlen (unused).  Everything a mirror needs, atomically:
-- the version and stream id it is current as of, and every entry.
local ver = redis.call('GET', P .. ':ver') or '0'
local last = redis.call('XREVRANGE', P .. ':log', '+', '-', 'COUNT', 1)
local lastid = '0-0'
if #last > 0 then lastid = last[1][1] end
return {ver, lastid, redis.call('HGETALL', P .. ':head'), redis.call('HGETALL', P .. ':meta')}
"""
)
