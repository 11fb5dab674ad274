"""The Lua scripts of the Redis flag store: restore from a node copy, trim the streams."""

from __future__ import annotations

# Restore the deployment from a node copy, only if Redis is still older than it.
# KEYS: meta, state, stages, history, migrations, history base, the latest trimmed
# change per flag, the latest trimmed event per plan. ARGV[1]: the copy as JSON (its
# base and ``trimmed`` too: its history replays from that base). ARGV[2] 'lost':
# also restore at the copy's own version and epoch if Redis lost keys of it (evicted
# under an allkeys-* maxmemory-policy): fewer flag states or stages than the copy
# holds at that version (only a commit changes them, and every commit moves the
# version), or a history or migrations stream gone while the copy holds entries;
# not when a stream ends in an entry other than the copy's last (another history
# up to this version, a fork: an eviction only removes keys; the refresh tells it).
# Sets meta's ``nstates`` / ``nstages`` to the states / stages it writes (see
# ``_check_states_kept``). KEYS[9..11]: the catalogue, plans and plan flags; ARGV[1]'s
# ``records``, the entries of each this node's application recorded, are
# written where Redis lacks them (HSETNX: none replaced, the resync's record then
# applies its own rules), in this script: no reader finds restored flag data
# without its catalogue. A key that is no hash is left to that record (pcall),
# which says so; the restore goes on.
_RESTORE = """
local data = cjson.decode(ARGV[1])
local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end
local function other(key, entries)
  local tail = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  return #tail > 0 and (#entries == 0 or tail[1][1] ~= entries[#entries][1])
end
local function lost()
  local m = redis.call('HMGET', KEYS[1], 'version', 'epoch')
  if m[1] ~= data.version or m[2] ~= data.epoch then return false end
  if other(KEYS[4], data.history) or other(KEYS[5], data.migrations) then
    return false
  end
  return redis.call('HLEN', KEYS[2]) < count(data.states)
      or redis.call('HLEN', KEYS[3]) < count(data.stages)
      or (#data.history > 0 and redis.call('EXISTS', KEYS[4]) == 0)
      or (#data.migrations > 0 and redis.call('EXISTS', KEYS[5]) == 0)
end
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(data.version)
    and not (ARGV[2] == 'lost' and lost()) then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
for name, state in pairs(data.states) do redis.call('HSET', KEYS[2], name, state) end
for plan, stage in pairs(data.stages) do redis.call('HSET', KEYS[3], plan, stage) end
for _, e in ipairs(data.history) do redis.call('XADD', KEYS[4], e[1], unpack(e[2])) end
for _, e in ipairs(data.migrations) do redis.call('XADD', KEYS[5], e[1], unpack(e[2])) end
for name, state in pairs(data.base) do redis.call('HSET', KEYS[6], name, state) end
for name, record in pairs(data.hlast) do redis.call('HSET', KEYS[7], name, record) end
for plan, event in pairs(data.mlast) do redis.call('HSET', KEYS[8], plan, event) end
redis.call('HSET', KEYS[1], 'version', data.version, 'epoch', data.epoch,
           'restored', data.restored, 'nstates', data.version .. ':' .. count(data.states),
           'nstages', data.version .. ':' .. count(data.stages))
if data.trimmed ~= '' then
  redis.call('HSET', KEYS[1], 'trimmed', data.trimmed)
else
  redis.call('HDEL', KEYS[1], 'trimmed')
end
if data.mtrimmed ~= '' then
  redis.call('HSET', KEYS[1], 'mtrimmed', data.mtrimmed)
else
  redis.call('HDEL', KEYS[1], 'mtrimmed')
end
-- KEYS[9..11] (_restore_if_behind passes them after the 8 of _keys()).
for i, entries in ipairs(data.records or {}) do
  for field, value in pairs(entries) do redis.pcall('HSETNX', KEYS[8 + i], field, value) end
end
return 1
"""


# Trim the history to the entries from ARGV[4] on, with ARGV[5] (JSON: flag ->
# state) as the new base and ARGV[6] (JSON: flag -> record) as the flags' latest
# trimmed changes that moved, only if nobody trimmed or restored since the trimmer
# read the entries it replayed (ARGV[1..3]: the epoch, restored and trimmed it
# read; '' for none). Commits only append after the cut: they need no check.
# ARGV[7] (JSON list): flags whose base was lost with entries kept, added to meta's
# ``unbased`` (their next commit writes a whole record: see _Trims._rebased and
# _Commits._queue_writes). KEYS: meta, history, history base, latest trimmed change
# per flag. Returns the entries trimmed, -1 if it moved.
_TRIM = """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'restored', 'trimmed')
if (m[1] or '') ~= ARGV[1] or (m[2] or '') ~= ARGV[2] or (m[3] or '') ~= ARGV[3] then
  return -1
end
local n = redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
redis.call('DEL', KEYS[3])
for name, state in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[3], name, state) end
for name, record in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', KEYS[4], name, record) end
redis.call('HSET', KEYS[1], 'trimmed', ARGV[4])
local unbased = cjson.decode(ARGV[7] or '[]')
if #unbased > 0 then
  local seen, out = {}, {}
  local ok, had = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'unbased') or '[]')
  if not ok or type(had) ~= 'table' then had = {} end
  for _, list in ipairs({had, unbased}) do
    for _, flag in ipairs(list) do
      if type(flag) == 'string' and not seen[flag] then
        seen[flag] = true
        out[#out + 1] = flag
      end
    end
  end
  redis.call('HSET', KEYS[1], 'unbased', cjson.encode(out))
end
return n
"""


# Trim the migrations stream to its last ARGV[1] events (exactly) and record the
# first kept id in meta's `mtrimmed` (what node copies mirror). Events are whole
# records: no base, no check; commits only append. Before the cut, each plan's
# latest event among those dropped (greatest `at`; the later entry on a tie) goes
# to KEYS[3] unless it holds a later one: a pending emergency rollback is checked
# against it (see committed_since). An event that does not decode is dropped
# unrecorded (readers of the stream refuse it anyway). KEYS: meta, migrations,
# latest trimmed event per plan. Returns the events trimmed.
_TRIM_EVENTS = """
local drop = redis.call('XLEN', KEYS[2]) - tonumber(ARGV[1])
if drop <= 0 then
  return 0
end
local latest = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', drop)) do
  local f = e[2]
  for i = 1, #f - 1, 2 do
    if f[i] == 'event' then
      local ok, ev = pcall(cjson.decode, f[i + 1])
      if ok and type(ev) == 'table' and type(ev.plan) == 'string'
          and type(ev.at) == 'number' then
        local seen = latest[ev.plan]
        if seen == nil or ev.at >= seen[1] then latest[ev.plan] = {ev.at, f[i + 1]} end
      end
    end
  end
end
for plan, e in pairs(latest) do
  local kept = redis.call('HGET', KEYS[3], plan)
  local later = false
  if kept then
    local ok, k = pcall(cjson.decode, kept)
    later = ok and type(k) == 'table' and type(k.at) == 'number' and k.at > e[1]
  end
  if not later then redis.call('HSET', KEYS[3], plan, e[2]) end
end
local n = redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[1])
if n > 0 then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  redis.call('HSET', KEYS[1], 'mtrimmed', first[1][1])
end
return n
"""


# Record the migration plan ARGV[1] (JSON ARGV[2]) with its plan flags (ARGV[4..]:
# ``plan_flag_field`` keys) and the flags of the record it replaces, in one step:
# a node never needs to have read the older record (an older library's record
# adds none to the plan flags hash) to keep its flags, and the union is taken at
# write time, after any record written meanwhile. The older record's (flag,
# stage) become fields as ``plan_flag_field`` writes them (ARGV[3]: its prefix,
# ``["<plan>", ``; the flag as Python's ``json.dumps`` quotes it, ASCII only).
# KEYS: plan flags, plans. Nothing is written unless both are hashes (or absent):
# returns {'wrongtype', key, type}; else {'ok', 1 if the older record could not be
# read (its flags not kept) else 0, the fields it added...}.
_RECORD_PLAN = """
local ESC = {[34] = '\\\\"', [92] = '\\\\\\\\', [8] = '\\\\b', [12] = '\\\\f',
             [10] = '\\\\n', [13] = '\\\\r', [9] = '\\\\t'}
local function escaped(cp)
  if ESC[cp] then return ESC[cp] end
  if cp >= 32 and cp < 127 then return string.char(cp) end
  if cp < 65536 then return string.format('\\\\u%04x', cp) end
  cp = cp - 65536
  return string.format('\\\\u%04x\\\\u%04x', 55296 + math.floor(cp / 1024), 56320 + cp % 1024)
end
local function quoted(s)
  local out, i = {'"'}, 1
  while i <= #s do
    local c, len, cp = s:byte(i), 0, 0
    if c < 128 then len, cp = 1, c
    elseif c >= 194 and c < 224 then len, cp = 2, c - 192
    elseif c >= 224 and c < 240 then len, cp = 3, c - 224
    elseif c >= 240 and c < 245 then len, cp = 4, c - 240
    else return nil end
    for j = i + 1, i + len - 1 do
      local b = s:byte(j)
      if b == nil or b < 128 or b > 191 then return nil end
      cp = cp * 64 + b - 128
    end
    if (len == 3 and (cp < 2048 or (cp >= 55296 and cp < 57344)))
        or (len == 4 and (cp < 65536 or cp > 1114111)) then
      return nil
    end
    out[#out + 1] = escaped(cp)
    i = i + len
  end
  out[#out + 1] = '"'
  return table.concat(out)
end
local function fields_of(text)
  local ok, plan = pcall(cjson.decode, text)
  if not ok or type(plan) ~= 'table' or type(plan.stages) ~= 'table' or #plan.stages == 0 then
    return nil
  end
  local out = {}
  for _, s in ipairs(plan.stages) do
    if type(s) ~= 'table' or type(s.flags) ~= 'table' or #s.flags == 0 then return nil end
    local n = tonumber(s.number)
    if n == nil or n < 1 or n > 9007199254740992 or n ~= math.floor(n) then return nil end
    for _, flag in ipairs(s.flags) do
      local q = type(flag) == 'string' and quoted(flag)
      if not q then return nil end
      out[#out + 1] = ARGV[3] .. q .. ', ' .. string.format('%d', n) .. ']'
    end
  end
  return out
end
for _, key in ipairs(KEYS) do
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'hash' and kind ~= 'none' then return {'wrongtype', key, kind} end
end
local reply, older = {'ok', 0}, {}
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and old ~= ARGV[2] then
  older = fields_of(old)
  if older == nil then reply[2], older = 1, {} end
end
for _, field in ipairs(older) do
  redis.call('HSET', KEYS[1], field, '1')
  reply[#reply + 1] = field
end
for i = 4, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], '1') end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return reply
"""
