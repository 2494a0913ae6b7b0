"""The per-conversation survey state in Redis, changed by one Lua script per message.

One hash per conversation (``csat:conv:<conversation>``, expiring ``state_ttl_s`` after its last
change) holds what a survey needs: the customer's last message (time, id, language, the customer
and business parties as JSON, whether it looked automated, the reply window of its channel) and
the latest survey (id, when it was sent, pending/rated/closed, the rating, whether a typed rating
is still taken). Every decision about a message is stored under the message id
(``csat:decision:<id>``), so a message processed again (a crash before the commit, a rebalance)
gets the very same outcome even though the state moved on since: the same survey, the same event.

Each message is one atomic script call and a batch sends all its calls in one pipeline: Redis runs
them one after the other, in batch order, so a later message of a conversation sees exactly what
the earlier ones did, as one-by-one processing would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.exceptions import NoScriptError, RedisError, ResponseError

# KEYS: 1 the conversation's hash, 2 the message's decision.
# ARGV: 1 'm' (a customer message) or 'r' (a resolution), 2 the message's time (unix seconds),
#   3 state TTL, 4 decision TTL, then per kind:
#   'm': 5 message id, 6 automated reason ('': a person), 7 language ('': unknown, the previous one
#        stays), 8 customer party JSON, 9 business party JSON, 10 e-mail ('1'/''), 11 reply window of
#        its channel (s, 0: none), 12 the survey id a postback answers ('': no survey postback),
#        13 that postback's rating, 14 the typed rating (0: none), 15 '1' when it is a text that is
#        no rating (a comment, or a new question), 16 expiry (s), 17 comment window (s).
#   'r': 5 the new survey's id, 6 now (unix seconds: a late resolution is checked against now),
#        7 who resolved (Author JSON, '': unknown).
# Returns for 'm': 'pass' (an ordinary message), 'R<n>|<survey>|<resolver>' (rated n),
#   'D<n>|<survey>|<resolver>' (the same rating again: nothing new), 'C<n>|<survey>|<resolver>' (a
#   comment on rating n), or false (no survey: nothing stored). For 'r': the decision as JSON
#   (verdict and the state it was taken on).
_STEP = """
local conv, dkey = KEYS[1], KEYS[2]
local t = tonumber(ARGV[2])
local done = redis.call('GET', dkey)
if done then return done end

if ARGV[1] == 'r' then
  local s = redis.call('HMGET', conv, 'at', 'auto', 'surveyed', 'win', 'lang', 'party', 'biz', 'msg', 'email')
  local at, span = tonumber(s[1]), tonumber(s[4]) or 0
  local verdict = 'sent'
  local now = math.max(t, tonumber(ARGV[6]))
  if not at then verdict = 'no_customer_message'
  elseif s[2] and s[2] ~= '' then verdict = 'automated_sender'
  elseif s[3] == '1' then verdict = 'already_surveyed'
  elseif span > 0 and at + span <= now then verdict = 'window_closed'
  end
  if verdict == 'sent' then
    redis.call('HSET', conv, 'sid', ARGV[5], 'sat', ARGV[2], 'st', 'p', 'rt', '0', 'rat', '0', 'typed', '1',
      'surveyed', '1', 'by', ARGV[7])
    redis.call('EXPIRE', conv, ARGV[3])
  end
  local decision = cjson.encode({verdict = verdict, lang = s[5] or '', party = s[6] or '', biz = s[7] or '',
    msg = s[8] or '', email = s[9] or ''})
  redis.call('SET', dkey, decision, 'EX', ARGV[4])
  return decision
end

local at = tonumber(redis.call('HGET', conv, 'at'))
if (not at) or t >= at then  -- a message replayed out of order never overwrites a newer one
  redis.call('HSET', conv, 'at', ARGV[2], 'msg', ARGV[5], 'auto', ARGV[6], 'party', ARGV[8], 'biz', ARGV[9],
    'email', ARGV[10], 'win', ARGV[11])
  if ARGV[7] ~= '' then redis.call('HSET', conv, 'lang', ARGV[7]) end
end
redis.call('EXPIRE', conv, ARGV[3])

local s = redis.call('HMGET', conv, 'sid', 'sat', 'st', 'rt', 'rat', 'typed', 'by')
local sid, sat = s[1], tonumber(s[2])
if (not sid) or t < sat then return false end  -- no survey, or a message from before it
local state, rating = s[3], tonumber(s[4])
local live = (state == 'p' and t < sat + tonumber(ARGV[16]))
  or (state == 'r' and t < tonumber(s[5]) + tonumber(ARGV[17]))
if not live then  -- expired or closed for good: the same answer every time, nothing to store
  if state == 'r' then redis.call('HSET', conv, 'st', 'c') end
  redis.call('HDEL', conv, 'surveyed')  -- the customer moved on: the next resolution may survey again
  return false
end

local outcome = 'pass'
local postback, typed = ARGV[12] == sid, tonumber(ARGV[14])
local tail = '|' .. sid .. '|' .. (s[7] or '')
local function rate(n)
  if state == 'r' and n == rating then return 'D' .. n .. tail end
  redis.call('HSET', conv, 'st', 'r', 'rt', n, 'rat', ARGV[2])
  return 'R' .. n .. tail
end
if postback then outcome = rate(tonumber(ARGV[13]))
elseif typed > 0 and (state == 'r' or s[6] == '1') then outcome = rate(typed)
elseif ARGV[15] == '1' then
  if state == 'r' then
    redis.call('HSET', conv, 'st', 'c')
    outcome = 'C' .. rating .. tail
  else
    redis.call('HSET', conv, 'typed', '0')  -- a new question: typed digits answer it, not the survey
  end
end
if outcome == 'pass' then redis.call('HDEL', conv, 'surveyed') end
-- stored while the survey is live: a message processed again (after the survey moved on) gets this
redis.call('SET', dkey, outcome, 'EX', ARGV[4])
return outcome
"""
STEP_SHA = hashlib.sha1(_STEP.encode()).hexdigest()  # noqa: S324 - the script's name in Redis


class Resolution(msgspec.Struct, kw_only=True):
    """A resolution's stored decision: the verdict and the conversation state it was taken on
    (JSON strings for the parties, as stored), so a redelivery builds the same survey."""

    verdict: str
    lang: str = ""
    party: str = ""
    biz: str = ""
    msg: str = ""
    email: str = ""


resolution_decoder = msgspec.json.Decoder(Resolution)


@dataclass(slots=True)
class Call:
    """One message's script call."""

    client: Any
    keys: tuple[str, str]
    args: list[str | bytes | int | float]


async def run_calls(calls: list[Call]) -> list[bytes | Exception | None]:
    """Run the calls in order, in one pipeline per Redis client; one result per call (the script's
    answer, None for false, or the exception that call failed with)."""
    results: list[bytes | Exception | None] = [None] * len(calls)
    groups: dict[int, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(id(call.client), []).append(i)
    for indexes in groups.values():
        client = calls[indexes[0]].client
        try:
            replies = await _pipeline(client, [calls[i] for i in indexes])
        except (RedisError, OSError) as exc:
            replies = [exc] * len(indexes)
        for i, reply in zip(indexes, replies, strict=True):
            results[i] = reply
    return results


async def _pipeline(client: Any, calls: list[Call]) -> list[bytes | Exception | None]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(STEP_SHA, 2, *call.keys, *call.args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    if any(isinstance(reply, NoScriptError) for reply in replies):
        # First use on this server (or after SCRIPT FLUSH): load it and run the refused calls again,
        # in order (a refused call did nothing; all of them are, unless another process loaded
        # the script meanwhile).
        await client.script_load(_STEP)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        pipe = client.pipeline(transaction=False)
        for i in missing:
            pipe.evalsha(STEP_SHA, 2, *calls[i].keys, *calls[i].args)
        for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
            replies[i] = reply
    out: list[bytes | Exception | None] = []
    for reply in replies:
        if reply is None or isinstance(reply, bytes | RedisError):
            out.append(reply)
        else:
            out.append(ResponseError(f"unexpected script answer {reply!r}"))
    return out
