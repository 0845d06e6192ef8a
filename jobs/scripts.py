"""Lua scripts for the state changes that must be atomic.

Each one moves a task between RQ's own structures (queue list, job hash, registries,
results stream, executions), so RQ's tools keep showing the truth, but does it in one
step: a worker that dies between two commands cannot lose a task or write it twice.
Job keys are derived inside the scripts, which is fine on a single Redis (not a cluster).
"""

from __future__ import annotations

from typing import Any

import redis

# KEYS: queue, started. ARGV: count, lease_score, worker_name, now_str, now_ts, execution_ttl, exec_prefix
# Returns a flat list: job_id, execution_id, compressed data, ... for each claimed job.
CLAIM = """
local ids = redis.call('LPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local out = {}
for i, id in ipairs(ids) do
  local jk = 'rq:job:' .. id
  local data = redis.call('HGET', jk, 'data')
  if data then
    local eid = ARGV[7] .. i
    local member = id .. ':' .. eid
    redis.call('ZADD', KEYS[2], ARGV[2], member)
    redis.call('HSET', jk, 'status', 'started', 'started_at', ARGV[4], 'last_heartbeat', ARGV[4],
               'worker_name', ARGV[3])
    local ek = 'rq:execution:' .. member
    redis.call('HSET', ek, 'id', eid, 'created_at', ARGV[5], 'last_heartbeat', ARGV[5], 'worker_name', ARGV[3])
    redis.call('EXPIRE', ek, ARGV[6])
    redis.call('ZADD', 'rq:executions:' .. id, ARGV[2], eid)
    redis.call('EXPIRE', 'rq:executions:' .. id, ARGV[6])
    out[#out + 1] = id
    out[#out + 1] = eid
    out[#out + 1] = data
  end
end
return out
"""

# KEYS: started, job, registry (finished or failed), results stream.
# ARGV: member, status, ended_at, registry_score, ttl, execution_id, job_id, result fields...
# Writes the result only if this worker still holds the task: exactly one result per task.
FINISH = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'ended_at', ARGV[3], 'last_heartbeat', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[7])
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], 'MAXLEN', '10', '*', unpack(fields))
redis.call('EXPIRE', KEYS[4], ARGV[5])
redis.call('DEL', 'rq:execution:' .. ARGV[1])
redis.call('ZREM', 'rq:executions:' .. ARGV[7], ARGV[6])
return 1
"""

# KEYS: started, queue, failed. ARGV: now_ts, max_abandons, failed_score, ttl, now_str, result fields...
# Puts back the tasks whose worker stopped heart-beating; fails those abandoned too often.
REQUEUE_ABANDONED = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local requeued, failed = 0, 0
for _, member in ipairs(expired) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('DEL', 'rq:execution:' .. member)
  local id = string.match(member, '^(.*):[^:]*$') or member
  local jk = 'rq:job:' .. id
  if redis.call('EXISTS', jk) == 1 then
    local n = redis.call('HINCRBY', jk, 'jobctl_abandons', 1)
    if n > tonumber(ARGV[2]) then
      redis.call('HSET', jk, 'status', 'failed', 'ended_at', ARGV[5])
      redis.call('ZADD', KEYS[3], ARGV[3], id)
      local fields = {}
      for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
      redis.call('XADD', 'rq:results:' .. id, 'MAXLEN', '10', '*', unpack(fields))
      redis.call('EXPIRE', 'rq:results:' .. id, ARGV[4])
      redis.call('EXPIRE', jk, ARGV[4])
      failed = failed + 1
    else
      redis.call('HSET', jk, 'status', 'queued')
      redis.call('LPUSH', KEYS[2], id)
      requeued = requeued + 1
    end
  end
end
return {requeued, failed}
"""

# KEYS: queue, job, canceled. ARGV: job_id, score, now_str
CANCEL = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], 'status', 'canceled', 'ended_at', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: failed, job, queue. ARGV: job_id, now_str
# The failure's result goes: a re-queued task must not read as failed, nor end with two results.
RETRY = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('DEL', 'rq:results:' .. ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'queued', 'enqueued_at', ARGV[2])
redis.call('HDEL', KEYS[2], 'jobctl_abandons')
redis.call('PERSIST', KEYS[2])
redis.call('RPUSH', KEYS[3], ARGV[1])
return 1
"""


# KEYS: started, queue, job. ARGV: member, job_id
# Gives a claimed task back to the queue (a worker stopping before it could finish).
RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', 'rq:execution:' .. ARGV[1])
redis.call('HSET', KEYS[3], 'status', 'queued')
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""


class Scripts:
    """The scripts registered on one connection (EVALSHA, loaded once)."""

    def __init__(self, conn: redis.Redis):
        self.claim: Any = conn.register_script(CLAIM)
        self.finish: Any = conn.register_script(FINISH)
        self.requeue_abandoned: Any = conn.register_script(REQUEUE_ABANDONED)
        self.cancel: Any = conn.register_script(CANCEL)
        self.retry: Any = conn.register_script(RETRY)
        self.release: Any = conn.register_script(RELEASE)
