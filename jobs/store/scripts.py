"""The Lua scripts behind every state change that must be atomic.

Each one moves tasks between RQ's own structures (queue list, job hash, registries, results
stream, executions), so RQ's tools keep showing the truth, and does it in one step: a worker
that dies between two commands cannot lose a task or write it twice. Each call handles a bounded
number of tasks (the callers chunk), so no call holds Redis for more than a few milliseconds.

Key names come from jobs/store/keys.py ($JOB, $RESULTS, ... are substituted below; $$ is a literal $). Scripts derive
job keys from ids, which is fine on one Redis, not on a cluster.
"""

from __future__ import annotations

from string import Template
from typing import Any

import redis

from jobs.store import keys

# Shared by the scripts that end or abandon an execution the way rq.executions.Execution.delete does.
_DROP_EXECUTION = """
local function drop_execution(started_key, member)
  local id, eid = string.match(member, '^(.*):([^:]*)$$')
  redis.call('ZREM', started_key, member)
  if id then
    redis.call('DEL', '$EXECUTION' .. member)
    redis.call('ZREM', '$EXECUTIONS' .. id, eid)
  end
  return id or member
end
"""

# KEYS: queue, started. ARGV: count, lease_score, worker_name, now_iso, now_ts, exec_ttl, exec_prefix
# Like RQ's dequeue + Execution.create + prepare_for_execution, for up to `count` tasks at once.
# Returns a flat list: job id, execution id, data, batch, fingerprint for each claimed task.
CLAIM = """
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local out = {}
local ttl = tonumber(ARGV[6])
for i, id in ipairs(ids) do
  local jk = '$JOB' .. id
  local f = redis.call('HMGET', jk, 'status', 'data', 'jobctl_batch', 'jobctl_fp')
  -- Only queued tasks: an id left behind by a cancel, or pushed twice, never runs twice.
  if f[1] == 'queued' and f[2] then
    local eid = ARGV[7] .. i
    local member = id .. ':' .. eid
    redis.call('ZADD', KEYS[2], ARGV[2], member)
    redis.call('HSET', jk, 'status', 'started', 'started_at', ARGV[4], 'last_heartbeat', ARGV[4],
               'worker_name', ARGV[3])
    local ek = '$EXECUTION' .. member
    redis.call('HSET', ek, 'id', eid, 'created_at', ARGV[5], 'last_heartbeat', ARGV[5], 'worker_name', ARGV[3])
    redis.call('EXPIRE', ek, ttl)
    redis.call('ZADD', '$EXECUTIONS' .. id, tonumber(ARGV[5]) + ttl + 60, eid)
    redis.call('EXPIRE', '$EXECUTIONS' .. id, ttl + 60)
    out[#out + 1] = id
    out[#out + 1] = eid
    out[#out + 1] = f[2]
    out[#out + 1] = f[3] or ''
    out[#out + 1] = f[4] or ''
  end
end
return out
"""

# KEYS: started. ARGV: lease_score, now_ts, now_iso, exec_ttl, members...
# Like RQ's Execution.heartbeat for each task this worker still holds. Returns how many it still holds.
HEARTBEAT = """
local held = 0
local ttl = tonumber(ARGV[4])
for i = 5, #ARGV do
  local member = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], member) then
    held = held + 1
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], member)
    local id, eid = string.match(member, '^(.*):([^:]*)$$')
    local ek = '$EXECUTION' .. member
    redis.call('HSET', ek, 'last_heartbeat', ARGV[2])
    redis.call('EXPIRE', ek, ttl)
    redis.call('ZADD', '$EXECUTIONS' .. id, tonumber(ARGV[2]) + ttl + 60, eid)
    redis.call('EXPIRE', '$EXECUTIONS' .. id, ttl + 60)
    redis.call('HSET', '$JOB' .. id, 'last_heartbeat', ARGV[3])
  end
end
return held
"""

# KEYS: started, job, registry (finished or failed), results stream, batch usage, worker.
# ARGV: member, status, ended_iso, registry_score, ttl, prompt_tokens, completion_tokens, worker counter,
#       seconds worked, result fields...
# Writes the result only if this worker still holds the task: exactly one result per task.
FINISH = (
    _DROP_EXECUTION
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local id = drop_execution(KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'ended_at', ARGV[3], 'last_heartbeat', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], id)
local fields = {}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], 'MAXLEN', '10', '*', unpack(fields))
redis.call('EXPIRE', KEYS[4], ARGV[5])
if tonumber(ARGV[6]) > 0 or tonumber(ARGV[7]) > 0 then
  redis.call('HINCRBY', KEYS[5], 'prompt_tokens', ARGV[6])
  redis.call('HINCRBY', KEYS[5], 'completion_tokens', ARGV[7])
  redis.call('EXPIRE', KEYS[5], ARGV[5] + 86400)
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  redis.call('HINCRBY', KEYS[6], ARGV[8], 1)
  redis.call('HINCRBYFLOAT', KEYS[6], 'total_working_time', ARGV[9])
end
return 1
"""
)

# KEYS: started, queue. ARGV: members...
# Gives claimed tasks back to the front of the queue (a worker stopping before it could finish them).
RELEASE = (
    _DROP_EXECUTION
    + """
local n = 0
for i = 1, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    local id = drop_execution(KEYS[1], ARGV[i])
    redis.call('HSET', '$JOB' .. id, 'status', 'queued')
    redis.call('LPUSH', KEYS[2], id)
    n = n + 1
  end
end
return n
"""
)

# KEYS: started, job, failed, intermediate. ARGV: member, now_iso, failed_score, reason.
# Fails a job that is not jobctl's (RQ's own worker popped it from a jobctl queue) without anything of
# it run: no callback, webhook or dependent, which RQ's failure path would act on. 1 if held, else 0.
REFUSE = (
    _DROP_EXECUTION
    + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local id = drop_execution(KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'failed', 'ended_at', ARGV[2], 'exc_info', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], id)
redis.call('LREM', KEYS[4], 1, id)
return 1
"""
)

# KEYS: intermediate, queue. ARGV: now_ts, grace_seconds, limit, first-seen key prefix.
# RQ's own worker pops a job into the queue's intermediate list before it starts it; one that died in
# between leaves the job there, neither queued nor started. RQ's cleanup would fail such a job; this
# puts it back at the front of the queue once it has sat there past the grace, and drops ids whose job
# has moved on (started ones are covered by their lease). Returns how many went back.
RECOVER_INTERMEDIATE = """
local back = 0
for _, id in ipairs(redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)) do
  local seen_key = ARGV[4] .. id
  local st = redis.call('HGET', '$JOB' .. id, 'status')
  if st == 'queued' then
    local seen = redis.call('GET', seen_key)
    if not seen then
      redis.call('SET', seen_key, ARGV[1], 'EX', 86400)
    elseif tonumber(ARGV[1]) - (tonumber(seen) or 0) > tonumber(ARGV[2]) then
      redis.call('LREM', KEYS[1], 1, id)
      redis.call('DEL', seen_key)
      if not redis.call('LPOS', KEYS[2], id) then
        redis.call('LPUSH', KEYS[2], id)
        back = back + 1
      end
    end
  elseif st ~= 'started' then
    redis.call('LREM', KEYS[1], 1, id)
    redis.call('DEL', seen_key)
  end
end
return back
"""

# KEYS: started, queue. ARGV: now_ts, limit, lease_score, worker_name, now_iso, exec_ttl, exec_prefix
# Puts back up to `limit` tasks whose worker stopped heart-beating, the way RQ's own cleanup does
# (retries_left counts down). A task with no retries left is claimed by this worker instead, so that
# it can seal an `abandoned` failure: returns {requeued, id, exec id, data, batch, fp, ...}.
SWEEP = (
    _DROP_EXECUTION
    + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local requeued = 0
local out = {0}
local ttl = tonumber(ARGV[6])
for i, member in ipairs(expired) do
  local id = drop_execution(KEYS[1], member)
  local jk = '$JOB' .. id
  local f = redis.call('HMGET', jk, 'status', 'retries_left', 'data', 'jobctl_batch', 'jobctl_fp')
  if f[1] == 'started' then
    local left = tonumber(f[2]) or 0
    if left > 0 then
      redis.call('HSET', jk, 'status', 'queued', 'retries_left', left - 1)
      redis.call('LPUSH', KEYS[2], id)
      requeued = requeued + 1
    elseif f[3] then
      local eid = ARGV[7] .. i
      local mine = id .. ':' .. eid
      redis.call('ZADD', KEYS[1], ARGV[3], mine)
      redis.call('HSET', jk, 'worker_name', ARGV[4], 'last_heartbeat', ARGV[5])
      local ek = '$EXECUTION' .. mine
      redis.call('HSET', ek, 'id', eid, 'created_at', ARGV[1], 'last_heartbeat', ARGV[1], 'worker_name', ARGV[4])
      redis.call('EXPIRE', ek, ttl)
      redis.call('ZADD', '$EXECUTIONS' .. id, tonumber(ARGV[1]) + ttl + 60, eid)
      redis.call('EXPIRE', '$EXECUTIONS' .. id, ttl + 60)
      for _, v in ipairs({id, eid, f[3], f[4] or '', f[5] or ''}) do out[#out + 1] = v end
    end
  end
end
out[1] = requeued
return out
"""
)

# KEYS: queue, canceled. ARGV: registry_score, now_iso, max_scan, job ids...
# Cancels queued tasks. LREM scans the whole list, so on a long queue the ids stay in it and the
# claim skips them (their status is no longer `queued`).
CANCEL = """
local n = 0
local scan = redis.call('LLEN', KEYS[1]) <= tonumber(ARGV[3])
for i = 4, #ARGV do
  local jk = '$JOB' .. ARGV[i]
  if redis.call('HGET', jk, 'status') == 'queued' then
    if scan then redis.call('LREM', KEYS[1], 1, ARGV[i]) end
    redis.call('HSET', jk, 'status', 'canceled', 'ended_at', ARGV[2])
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: queue, failed, canceled. ARGV: now_iso, retries, then (job id, new data or '', new fp or '') triples.
# Re-queues failed or cancelled tasks, optionally with a new payload (`retry --options`). The old
# result goes: a re-queued task must not read as failed, nor end with two results.
RETRY = """
local n = 0
for i = 3, #ARGV, 3 do
  local id = ARGV[i]
  local jk = '$JOB' .. id
  local st = redis.call('HGET', jk, 'status')
  if st == 'failed' or st == 'canceled' or st == 'stopped' then
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('DEL', '$RESULTS' .. id)
    if ARGV[i + 1] ~= '' then
      redis.call('HSET', jk, 'data', ARGV[i + 1], 'jobctl_fp', ARGV[i + 2])
    end
    redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', ARGV[1], 'retries_left', ARGV[2])
    redis.call('HDEL', jk, 'ended_at', 'exc_info')
    redis.call('PERSIST', jk)
    redis.call('RPUSH', KEYS[1], id)
    n = n + 1
  end
end
return n
"""

# KEYS: queue, started, finished, failed, canceled. ARGV: batch, now_iso, retries, job ids...
# Makes a staged batch's tasks visible to workers. Idempotent: a publish that died half-way is run
# again from the start (jobs/store/submit.py rolls it forward), and what is already published stays.
PUBLISH = """
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = '$JOB' .. id
  local f = redis.call('HMGET', jk, 'status', 'jobctl_batch', 'jobctl_next_batch')
  if f[1] == 'created' and f[2] == ARGV[1] then
    redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', ARGV[2])
    redis.call('PERSIST', jk)
    redis.call('RPUSH', KEYS[1], id)
    n = n + 1
  elseif f[3] == ARGV[1] then
    -- A replacement (--replace): the new content takes the job's place; a running execution of the old
    -- content loses its lease, so its result is dropped when it finishes.
    local nx = redis.call('HMGET', jk, 'jobctl_next_data', 'jobctl_next_fp')
    redis.call('HSET', jk, 'data', nx[1], 'jobctl_fp', nx[2], 'jobctl_batch', ARGV[1],
               'status', 'queued', 'enqueued_at', ARGV[2], 'retries_left', ARGV[3])
    redis.call('HDEL', jk, 'jobctl_next_data', 'jobctl_next_fp', 'jobctl_next_batch', 'ended_at', 'exc_info')
    redis.call('PERSIST', jk)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[5], id)
    redis.call('DEL', '$RESULTS' .. id)
    if f[1] == 'started' then
      for _, eid in ipairs(redis.call('ZRANGE', '$EXECUTIONS' .. id, 0, -1)) do
        redis.call('ZREM', KEYS[2], id .. ':' .. eid)
        redis.call('DEL', '$EXECUTION' .. id .. ':' .. eid)
      end
      redis.call('DEL', '$EXECUTIONS' .. id)
    end
    if f[1] ~= 'queued' then redis.call('RPUSH', KEYS[1], id) end
    n = n + 1
  end
end
return n
"""

# KEYS: lock. ARGV: token, ttl_ms. Renews the lock if this caller still holds it.
RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: lock. ARGV: token.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _render(lua: str) -> str:
    return Template(lua).substitute(keys.LUA_PREFIXES)


class Scripts:
    """The scripts registered on one connection (EVALSHA, loaded once per connection)."""

    def __init__(self, conn: redis.Redis):
        self.claim: Any = conn.register_script(_render(CLAIM))
        self.heartbeat: Any = conn.register_script(_render(HEARTBEAT))
        self.finish: Any = conn.register_script(_render(FINISH))
        self.release: Any = conn.register_script(_render(RELEASE))
        self.sweep: Any = conn.register_script(_render(SWEEP))
        self.refuse: Any = conn.register_script(_render(REFUSE))
        self.recover_intermediate: Any = conn.register_script(_render(RECOVER_INTERMEDIATE))
        self.cancel: Any = conn.register_script(_render(CANCEL))
        self.retry: Any = conn.register_script(_render(RETRY))
        self.publish: Any = conn.register_script(_render(PUBLISH))
        self.renew_lock: Any = conn.register_script(RENEW_LOCK)
        self.release_lock: Any = conn.register_script(RELEASE_LOCK)
