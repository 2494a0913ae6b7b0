"""The profile store's Lua scripts: each operation is one script, so concurrent workers and API
calls never see a half-linked or half-merged profile.

Key layout under ``<redis.key_prefix>pf:`` (profile ids are UUIDv7; identities appear in key names
only as SHA-1 digests of their stored form, which keeps them out of key listings, though it does not
anonymize them):

- ``p:<id>``           hash: ``created`` and ``seen`` (ms), ``seen:<instance>`` (ms), ``external_id``
- ``p:<id>:ids``       set of the profile's identities ("scope|type|value")
- ``p:<id>:merged``    set of the profile ids merged into it (their tombstones point here)
- ``p:<id>:outcomes``  set of the outcome keys that name it (deleted with it on erasure)
- ``i:<sha1>``         identity -> profile id
- ``t:<id>``           tombstone of a merged profile -> the profile it was merged into
- outcome keys         (given by the caller) the reply of a call that changed something, so a
                       message processed again reports the very same links and merges

Every key of a profile gets the retention TTL, refreshed on each message and link: a profile not
seen for the retention period disappears with its identities, tombstones and outcomes. The scripts
compute key names from their arguments, so they need a standalone Redis (or a cluster whose keys
share one slot), like the rest of the gateway's Redis use.
"""

from __future__ import annotations

_COMMON = """
local base = ARGV[1]
local function pkey(id) return base .. 'p:' .. id end
local function ikey(identity) return base .. 'i:' .. redis.sha1hex(identity) end
local function tkey(id) return base .. 't:' .. id end
local function live(id)
  for _ = 1, 8 do
    if redis.call('EXISTS', pkey(id)) == 1 then return id end
    local nxt = redis.call('GET', tkey(id))
    if not nxt then return false end
    id = nxt
  end
  return false
end
"""

# Resolve-or-create, link and merge, in one. ARGV: base, candidate id for a new profile, TTL s, the
# instance a message came from ('' for an API link), the profile to link to ('' none), the outcome
# key ('' none) and its TTL s, mode ('auto': a conflict leaves the profiles apart; 'explicit': a
# conflict is refused), then the identities. Reply: {status, profile id, created, identity count,
# others, number of links, linked identities..., merged profile ids...}; status is ok, conflict
# (two profiles with different external ids) or not_found (the profile to link to is unknown).
LINK = (
    _COMMON
    + """
local new_id, ttl, instance, wanted = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local outcome_key, outcome_ttl, mode = ARGV[6], ARGV[7], ARGV[8]
local first = 9
if outcome_key ~= '' then
  local stored = redis.call('GET', outcome_key)
  if stored then
    local reply = cjson.decode(stored)
    reply[2] = live(reply[2]) or reply[2]
    return reply
  end
end
local t = redis.call('TIME')
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))

local found, seen, owner = {}, {}, {}
local function add(id)
  if id and not seen[id] then
    seen[id] = true
    found[#found + 1] = id
  end
end
if wanted ~= '' then
  local w = live(wanted)
  if not w then return {'not_found', wanted, '0', '0', '0', '0'} end
  add(w)
end
for i = first, #ARGV do
  local pid = redis.call('GET', ikey(ARGV[i]))
  if pid then pid = live(pid) end
  owner[i] = pid
  add(pid)
end

-- Two different external (CRM) ids are two customers: never merge them (the Chatwoot rule).
local external = {}
local externals = 0
local function note(value)
  if value and value ~= '' and not external[value] then
    external[value] = true
    externals = externals + 1
  end
end
for _, id in ipairs(found) do note(redis.call('HGET', pkey(id), 'external_id')) end
for i = first, #ARGV do
  if not owner[i] and string.sub(ARGV[i], 1, 21) == 'external|external_id|' then note(string.sub(ARGV[i], 22)) end
end

local function others(pid)
  local mine = 0
  for i = first, #ARGV do mine = mine + redis.call('SISMEMBER', pkey(pid) .. ':ids', ARGV[i]) end
  return redis.call('SCARD', pkey(pid) .. ':ids') > mine and '1' or '0'
end
local function touch(pid)
  if instance ~= '' then redis.call('HSET', pkey(pid), 'seen', now, 'seen:' .. instance, now) end
  for _, suffix in ipairs({'', ':ids', ':merged', ':outcomes'}) do redis.call('EXPIRE', pkey(pid) .. suffix, ttl) end
  for _, ident in ipairs(redis.call('SMEMBERS', pkey(pid) .. ':ids')) do redis.call('EXPIRE', ikey(ident), ttl) end
  for _, id in ipairs(redis.call('SMEMBERS', pkey(pid) .. ':merged')) do redis.call('EXPIRE', tkey(id), ttl) end
end

if externals > 1 then
  if mode == 'explicit' or #found == 0 then return {'conflict', found[1] or '', '0', '0', '0', '0'} end
  -- A message: it stays with the profile of its first (channel-native) identity that has one.
  local pid = found[1]
  for i = first, #ARGV do if owner[i] then pid = owner[i] break end end
  touch(pid)
  return {'conflict', pid, '0', tostring(redis.call('SCARD', pkey(pid) .. ':ids')), others(pid), '0'}
end

local survivor, created = nil, '0'
if #found == 0 then
  survivor, created = new_id, '1'
  redis.call('HSET', pkey(survivor), 'created', now, 'seen', now)
else
  -- The oldest profile is kept (creation time, then id): a fixed direction, whatever the order of
  -- the identities, so two workers merging the same pair agree.
  local best = nil
  for _, id in ipairs(found) do
    local c = tonumber(redis.call('HGET', pkey(id), 'created') or '0')
    if not best or c < best or (c == best and id < survivor) then best, survivor = c, id end
  end
end

local merged = {}
for _, id in ipairs(found) do
  if id ~= survivor then
    local from = pkey(id)
    for _, identity in ipairs(redis.call('SMEMBERS', from .. ':ids')) do
      redis.call('SET', ikey(identity), survivor, 'EX', ttl)
      redis.call('SADD', pkey(survivor) .. ':ids', identity)
    end
    local fields = redis.call('HGETALL', from)
    for j = 1, #fields, 2 do
      local f, v = fields[j], fields[j + 1]
      if string.sub(f, 1, 4) == 'seen' then
        if tonumber(v) > tonumber(redis.call('HGET', pkey(survivor), f) or '0') then
          redis.call('HSET', pkey(survivor), f, v)
        end
      elseif f == 'external_id' then
        redis.call('HSETNX', pkey(survivor), f, v)
      end
    end
    -- Earlier tombstones of the merged profile now point at the survivor too (no chains).
    for _, old in ipairs(redis.call('SMEMBERS', from .. ':merged')) do
      redis.call('SET', tkey(old), survivor, 'EX', ttl)
      redis.call('SADD', pkey(survivor) .. ':merged', old)
    end
    for _, key in ipairs(redis.call('SMEMBERS', from .. ':outcomes')) do
      redis.call('SADD', pkey(survivor) .. ':outcomes', key)
    end
    redis.call('DEL', from, from .. ':ids', from .. ':merged', from .. ':outcomes')
    redis.call('SET', tkey(id), survivor, 'EX', ttl)
    redis.call('SADD', pkey(survivor) .. ':merged', id)
    merged[#merged + 1] = id
  end
end

local linked = {}
for i = first, #ARGV do
  if owner[i] ~= survivor and redis.call('SISMEMBER', pkey(survivor) .. ':ids', ARGV[i]) == 0 then
    redis.call('SET', ikey(ARGV[i]), survivor, 'EX', ttl)
    redis.call('SADD', pkey(survivor) .. ':ids', ARGV[i])
    if string.sub(ARGV[i], 1, 21) == 'external|external_id|' then
      redis.call('HSET', pkey(survivor), 'external_id', string.sub(ARGV[i], 22))
    end
    if created == '0' then linked[#linked + 1] = ARGV[i] end
  end
end

touch(survivor)
local reply = {'ok', survivor, created, tostring(redis.call('SCARD', pkey(survivor) .. ':ids')), others(survivor),
               tostring(#linked)}
for _, v in ipairs(linked) do reply[#reply + 1] = v end
for _, v in ipairs(merged) do reply[#reply + 1] = v end
if outcome_key ~= '' and (created == '1' or #linked > 0 or #merged > 0) then
  redis.call('SET', outcome_key, cjson.encode(reply), 'EX', outcome_ttl)
  redis.call('SADD', pkey(survivor) .. ':outcomes', outcome_key)
  redis.call('EXPIRE', pkey(survivor) .. ':outcomes', ttl)
end
return reply
"""
)

# ARGV: base, profile id. Reply: {} when unknown, else {live id, hash fields (flat), identities}.
GET = (
    _COMMON
    + """
local pid = live(ARGV[2])
if not pid then return {} end
return {pid, redis.call('HGETALL', pkey(pid)), redis.call('SMEMBERS', pkey(pid) .. ':ids'),
        redis.call('SMEMBERS', pkey(pid) .. ':merged')}
"""
)

# Erasure. ARGV: base, profile id (a merged id erases the profile it was merged into: the same
# person). Reply: {} when unknown, else {profile id, identities, merged ids}.
DELETE = (
    _COMMON
    + """
local pid = live(ARGV[2])
if not pid then return {} end
local p = pkey(pid)
local identities = redis.call('SMEMBERS', p .. ':ids')
for _, identity in ipairs(identities) do
  if redis.call('GET', ikey(identity)) == pid then redis.call('DEL', ikey(identity)) end
end
local merged = redis.call('SMEMBERS', p .. ':merged')
for _, id in ipairs(merged) do redis.call('DEL', tkey(id)) end
for _, key in ipairs(redis.call('SMEMBERS', p .. ':outcomes')) do redis.call('DEL', key) end
redis.call('DEL', p, p .. ':ids', p .. ':merged', p .. ':outcomes')
return {pid, identities, merged}
"""
)
