/*
 * queue_lua: the Lua scripts of the Redis job protocol (see queue.h for the
 * key schema and queue_lua.h for how they are run).
 *
 * Conventions, all scripts:
 * - ARGV[1] is the key prefix, a hash tag such as "{mr}". KEYS name the main
 *   keys (so a Cluster client routes the call to the right node); other keys
 *   are computed from the prefix, which is legal on Cluster only because
 *   every key shares that one hash tag.
 * - Time is the Redis server's (TIME), never a client clock: liveness must
 *   not depend on the workers' clocks agreeing.
 * - A job hash holds: id, state (queued|running|done|failed|cancelled),
 *   payload, reply_to, attempts (claims so far), crashes, max_attempts,
 *   max_runtime_ms, created_ms, started_ms, finished_ms, worker, result,
 *   error, dead ('1' once dead-lettered).
 * - Lua strings use single quotes so the C literals need no escaping.
 */
#include "common/queue_lua.h"

#include <stddef.h>

/* clang-format off */
#define PRELUDE                                                                                    \
    "local P = ARGV[1]\n"                                                                          \
    "local function now_ms()\n"                                                                    \
    "  local t = redis.call('TIME')\n"                                                             \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                         \
    "end\n"                                                                                        \
    "-- Wake every API instance waiting on this job: the submitter (reply_to)\n"                   \
    "-- and the watchers, each through its inbox list, once.\n"                                    \
    "local function notify(id)\n"                                                                  \
    "  local jk = P .. ':job:' .. id\n"                                                            \
    "  local wk = jk .. ':w'\n"                                                                    \
    "  local seen = {}\n"                                                                          \
    "  local targets = redis.call('SMEMBERS', wk)\n"                                               \
    "  local rt = redis.call('HGET', jk, 'reply_to')\n"                                            \
    "  if rt and rt ~= '' then targets[#targets + 1] = rt end\n"                                   \
    "  for _, api in ipairs(targets) do\n"                                                         \
    "    if not seen[api] then\n"                                                                  \
    "      seen[api] = true\n"                                                                     \
    "      local ib = P .. ':inbox:' .. api\n"                                                     \
    "      redis.call('LPUSH', ib, id)\n"                                                          \
    "      redis.call('EXPIRE', ib, 300)\n"                                                        \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  redis.call('DEL', wk)\n"                                                                    \
    "end\n"                                                                                        \
    "-- Terminal transition: record, drop from the running index, expire, count, notify.\n"        \
    "local function finish(id, state, field, value, ttl, now)\n"                                   \
    "  local jk = P .. ':job:' .. id\n"                                                            \
    "  redis.call('HSET', jk, 'state', state, 'finished_ms', now, field, value)\n"                 \
    "  redis.call('ZREM', P .. ':running', id)\n"                                                  \
    "  redis.call('EXPIRE', jk, ttl)\n"                                                            \
    "  redis.call('HINCRBY', P .. ':stats', state, 1)\n"                                           \
    "  notify(id)\n"                                                                               \
    "end\n"                                                                                        \
    "-- Back to the front of the line (consumers take from the right).\n"                          \
    "local function requeue(id, reason)\n"                                                         \
    "  local jk = P .. ':job:' .. id\n"                                                            \
    "  redis.call('HSET', jk, 'state', 'queued')\n"                                                \
    "  if reason then redis.call('HSET', jk, 'error', reason) end\n"                               \
    "  redis.call('ZREM', P .. ':running', id)\n"                                                  \
    "  redis.call('RPUSH', P .. ':queue', id)\n"                                                   \
    "  redis.call('ZADD', P .. ':wake', 0, 'w')\n"                                                 \
    "end\n"                                                                                        \
    "-- Give up on a job: failed, marked dead, on the dead list (capped).\n"                       \
    "local function bury(id, reason, ttl, now)\n"                                                  \
    "  redis.call('HSET', P .. ':job:' .. id, 'dead', '1')\n"                                      \
    "  finish(id, 'failed', 'error', reason, ttl, now)\n"                                          \
    "  redis.call('LPUSH', P .. ':dead', id)\n"                                                    \
    "  redis.call('LTRIM', P .. ':dead', 0, 9999)\n"                                               \
    "  redis.call('HINCRBY', P .. ':stats', 'dead', 1)\n"                                          \
    "end\n"

/* KEYS: 1 job:<id>  2 queue
 * ARGV: 2 id  3 payload  4 reply_to  5 idem key ('' none)  6 idem ttl ms
 *       7 max_attempts  8 max_backlog (0 unbounded)  9 max_runtime_ms
 * Returns {1, id} new, {0, id} existing (same id or same idempotency key),
 * {-1, id} backlog full. The first write is the HSET, so a Redis out of
 * memory refuses the whole script before anything is written. */
static const char lua_enqueue[] = PRELUDE
    "local id = ARGV[2]\n"
    "local ik = P .. ':idem:' .. ARGV[5]\n"
    "if ARGV[5] ~= '' then\n"
    "  local prev = redis.call('GET', ik)\n"
    "  if prev and redis.call('EXISTS', P .. ':job:' .. prev) == 1 then return {0, prev} end\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then return {0, id} end\n"
    "local maxb = tonumber(ARGV[8])\n"
    "if maxb > 0 and redis.call('LLEN', KEYS[2]) >= maxb then return {-1, id} end\n"
    "redis.call('HSET', KEYS[1], 'id', id, 'state', 'queued', 'payload', ARGV[3],\n"
    "  'reply_to', ARGV[4], 'attempts', 0, 'crashes', 0, 'max_attempts', ARGV[7],\n"
    "  'max_runtime_ms', ARGV[9], 'created_ms', now_ms())\n"
    "redis.call('LPUSH', KEYS[2], id)\n"
    "redis.call('ZADD', P .. ':wake', 0, 'w')\n"
    "if ARGV[5] ~= '' then redis.call('SET', ik, id, 'PX', ARGV[6]) end\n"
    "redis.call('HINCRBY', P .. ':stats', 'enqueued', 1)\n"
    "return {1, id}\n";

/* KEYS: 1 processing:<wid>  2 queue ; ARGV: 2 wid  3 n
 * Moves up to n ids from the queue into the worker's processing list (LMOVE:
 * the id never leaves Redis) and marks them running. Ids whose job is no
 * longer queued (cancelled, expired) are dropped. Re-arms the doorbell when
 * work remains so the next idle worker wakes.
 * Returns {-1} when wid is not a registered runner (never registered, or
 * reaped), else {0, id, attempt, payload, created_ms, ...}. */
static const char lua_claim[] = PRELUDE
    "local wid, n = ARGV[2], tonumber(ARGV[3])\n"
    "if not redis.call('ZSCORE', P .. ':runners', wid) then return {-1} end\n"
    "local now = now_ms()\n"
    "local out, c = {0}, 0\n"
    "while c < n do\n"
    "  local id = redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT')\n"
    "  if not id then break end\n"
    "  local jk = P .. ':job:' .. id\n"
    "  local f = redis.call('HMGET', jk, 'state', 'max_runtime_ms', 'payload', 'created_ms')\n"
    "  if f[1] == 'queued' then\n"
    "    local a = redis.call('HINCRBY', jk, 'attempts', 1)\n"
    "    local mr = tonumber(f[2] or '0') or 0\n"
    "    local dl = '+inf'\n"
    "    if mr > 0 then dl = now + mr end\n"
    "    redis.call('HSET', jk, 'state', 'running', 'worker', wid, 'started_ms', now)\n"
    "    redis.call('ZADD', P .. ':running', dl, id)\n"
    "    out[#out + 1] = id\n"
    "    out[#out + 1] = a\n"
    "    out[#out + 1] = f[3] or ''\n"
    "    out[#out + 1] = f[4] or '0'\n"
    "    c = c + 1\n"
    "  else\n"
    "    redis.call('LREM', KEYS[1], 1, id)\n"
    "  end\n"
    "end\n"
    "if redis.call('LLEN', KEYS[2]) > 0 then redis.call('ZADD', P .. ':wake', 0, 'w') end\n"
    "return out\n";

/* KEYS: 1 runners  2 runner:<wid>  3 processing:<wid>
 * ARGV: 2 wid  3 'register'|'beat'  4 info ttl s  5 info JSON
 * Returns {-1} when a beat finds the runner gone (it was declared dead: the
 * worker must drop its work and register under a new id), else
 * {1, id, attempt|'abort', ...} for every id in its processing list: 'abort'
 * when the job is no longer this runner's to finish (cancelled, reaped). */
static const char lua_heartbeat[] = PRELUDE
    "local wid = ARGV[2]\n"
    "if ARGV[3] ~= 'register' and not redis.call('ZSCORE', KEYS[1], wid) then return {-1} end\n"
    "local now = now_ms()\n"
    "redis.call('ZADD', KEYS[1], now, wid)\n"
    "redis.call('HSET', KEYS[2], 'beat_ms', now, 'info', ARGV[5])\n"
    "redis.call('EXPIRE', KEYS[2], ARGV[4])\n"
    "local out = {1}\n"
    "for _, id in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do\n"
    "  local f = redis.call('HMGET', P .. ':job:' .. id, 'state', 'worker', 'attempts')\n"
    "  out[#out + 1] = id\n"
    "  if f[1] == 'running' and f[2] == wid then out[#out + 1] = f[3]\n"
    "  else out[#out + 1] = 'abort' end\n"
    "end\n"
    "return out\n";

/* KEYS: 1 job:<id>  2 processing:<wid>
 * ARGV: 2 id  3 wid  4 attempt  5 outcome  6 result or error  7 result ttl s
 *       8 dead ttl s  9 timing JSON ('' none; kept on done)
 * Fenced: acts only while the job is running, owned by wid, at this attempt;
 * a zombie's late call returns 0 and changes nothing. Outcomes:
 *   done     record the result (terminal)          -> 1
 *   failed   record a permanent job error          -> 1
 *   retry    a worker-side error: requeue, or bury past max_attempts -> 2 / 1
 *   release  hand the job back uncharged (graceful shutdown) -> 2 */
static const char lua_finish[] = PRELUDE
    "local id, outcome = ARGV[2], ARGV[5]\n"
    "redis.call('LREM', KEYS[2], 1, id)\n"
    "local f = redis.call('HMGET', KEYS[1], 'state', 'worker', 'attempts', 'max_attempts')\n"
    "if f[1] ~= 'running' or f[2] ~= ARGV[3] or f[3] ~= ARGV[4] then return 0 end\n"
    "local now = now_ms()\n"
    "if outcome == 'done' then\n"
    "  if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'timing', ARGV[9]) end\n"
    "  finish(id, 'done', 'result', ARGV[6], ARGV[7], now)\n"
    "  return 1\n"
    "end\n"
    "if outcome == 'failed' then finish(id, 'failed', 'error', ARGV[6], ARGV[7], now) return 1 end\n"
    "if outcome == 'release' then\n"
    "  redis.call('HINCRBY', KEYS[1], 'attempts', -1)\n"
    "  redis.call('HINCRBY', P .. ':stats', 'released', 1)\n"
    "  requeue(id, nil)\n"
    "  return 2\n"
    "end\n"
    "if tonumber(f[3]) >= tonumber(f[4]) then\n"
    "  bury(id, ARGV[6] .. ' (attempt ' .. f[3] .. ' of ' .. f[4] .. ')', ARGV[8], now)\n"
    "  return 1\n"
    "end\n"
    "redis.call('HINCRBY', P .. ':stats', 'retried', 1)\n"
    "requeue(id, ARGV[6])\n"
    "return 2\n";

/* KEYS: 1 job:<id>  2 queue ; ARGV: 2 id  3 result ttl s
 * A queued or running job becomes cancelled at once (terminal, waiters
 * notified); its runner learns it from its next heartbeat ('abort') and its
 * late finish is fenced off. Returns the state the job had before, or
 * 'missing'. */
static const char lua_cancel[] = PRELUDE
    "local st = redis.call('HGET', KEYS[1], 'state')\n"
    "if not st then return 'missing' end\n"
    "if st == 'queued' or st == 'running' then\n"
    "  if st == 'queued' then redis.call('LREM', KEYS[2], 1, ARGV[2]) end\n"
    "  finish(ARGV[2], 'cancelled', 'error', 'cancelled by request', ARGV[3], now_ms())\n"
    "end\n"
    "return st\n";

/* KEYS: 1 runners  2 reaper (lease)
 * ARGV: 2 worker ttl ms  3 lease ms  4 result ttl s  5 dead ttl s
 *       6 skip liveness ('1' just after a Redis restart)  7 runners per pass
 * Runs at most once per lease period fleet-wide. Runners whose last beat is
 * older than the ttl are dead: each running job in their processing list
 * goes back to the front of the queue, or is buried once it has used
 * max_attempts. Jobs past their max runtime are recovered the same way.
 * Returns {took lease 0/1, runners reaped, jobs requeued, jobs buried}. */
static const char lua_reap[] = PRELUDE
    "if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return {0, 0, 0, 0} end\n"
    "local now = now_ms()\n"
    "local reaped, requeued, buried = 0, 0, 0\n"
    "local function recover(id, owner, reason)\n"
    "  local jk = P .. ':job:' .. id\n"
    "  local f = redis.call('HMGET', jk, 'state', 'worker', 'attempts', 'max_attempts')\n"
    "  if f[1] ~= 'running' then redis.call('ZREM', P .. ':running', id) return end\n"
    "  if owner and f[2] ~= owner then return end\n"
    "  redis.call('HINCRBY', jk, 'crashes', 1)\n"
    "  if tonumber(f[3]) >= tonumber(f[4]) then\n"
    "    bury(id, reason .. ' on attempt ' .. f[3] .. ' of ' .. f[4], ARGV[5], now)\n"
    "    buried = buried + 1\n"
    "  else\n"
    "    requeue(id, reason)\n"
    "    redis.call('HINCRBY', P .. ':stats', 'requeued', 1)\n"
    "    requeued = requeued + 1\n"
    "  end\n"
    "end\n"
    "if ARGV[6] ~= '1' then\n"
    "  local cutoff = now - tonumber(ARGV[2])\n"
    "  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0,\n"
    "                          tonumber(ARGV[7]))\n"
    "  for _, wid in ipairs(dead) do\n"
    "    local pk = P .. ':processing:' .. wid\n"
    "    for _, id in ipairs(redis.call('LRANGE', pk, 0, -1)) do\n"
    "      recover(id, wid, 'worker ' .. wid .. ' stopped heartbeating')\n"
    "    end\n"
    "    redis.call('DEL', pk, P .. ':runner:' .. wid)\n"
    "    redis.call('ZREM', KEYS[1], wid)\n"
    "    reaped = reaped + 1\n"
    "  end\n"
    "end\n"
    "for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':running', '-inf', now,\n"
    "                               'LIMIT', 0, 100)) do\n"
    "  recover(id, nil, 'max runtime exceeded')\n"
    "end\n"
    "return {1, reaped, requeued, buried}\n";

/* KEYS: 1 queue ; ARGV: 2 worker ttl ms
 * Returns {backlog, running, live runners, dead, oldest queued age ms (-1
 * when none), counter name, value, ...}. Runners count as live by the score
 * of their last beat, so a crashed one stops counting after the ttl even
 * before any reaper has run. */
static const char lua_stats[] = PRELUDE
    "local now = now_ms()\n"
    "local oldest = -1\n"
    "local tail = redis.call('LINDEX', KEYS[1], -1)\n"
    "if tail then\n"
    "  local c = redis.call('HGET', P .. ':job:' .. tail, 'created_ms')\n"
    "  if c then oldest = now - tonumber(c) end\n"
    "end\n"
    "local out = {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', P .. ':running'),\n"
    "  redis.call('ZCOUNT', P .. ':runners', now - tonumber(ARGV[2]), '+inf'),\n"
    "  redis.call('LLEN', P .. ':dead'), oldest}\n"
    "for _, v in ipairs(redis.call('HGETALL', P .. ':stats')) do out[#out + 1] = v end\n"
    "return out\n";

/* KEYS: 1 runners ; ARGV: 2 worker ttl ms  3 most runners
 * Returns {wid, ms since its last beat, info JSON, ...} for the live runners. */
static const char lua_runners[] = PRELUDE
    "local now = now_ms()\n"
    "local out = {}\n"
    "local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf',\n"
    "                        'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))\n"
    "for i = 1, #live, 2 do\n"
    "  out[#out + 1] = live[i]\n"
    "  out[#out + 1] = now - tonumber(live[i + 1])\n"
    "  out[#out + 1] = redis.call('HGET', P .. ':runner:' .. live[i], 'info') or '{}'\n"
    "end\n"
    "return out\n";

/* KEYS: 1 job:<id>  2 queue ; ARGV: 2 id  3 watcher api id ('' none)  4 watch ttl s
 * Reads a job; when it is not finished and a watcher is given, registers the
 * watcher in the same atomic step (so either the watcher is registered before
 * the job finishes and is notified, or it sees the finished state here).
 * Returns {} when missing, else {state, attempts, result, error, created_ms,
 * started_ms, finished_ms, worker, dead, timing, position (-1 unless queued)}. */
static const char lua_info[] = PRELUDE
    "local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'result', 'error',\n"
    "  'created_ms', 'started_ms', 'finished_ms', 'worker', 'dead', 'timing')\n"
    "if not f[1] then return {} end\n"
    "local live = f[1] == 'queued' or f[1] == 'running'\n"
    "if live and ARGV[3] ~= '' then\n"
    "  redis.call('SADD', KEYS[1] .. ':w', ARGV[3])\n"
    "  redis.call('EXPIRE', KEYS[1] .. ':w', ARGV[4])\n"
    "end\n"
    "local pos = -1\n"
    "if f[1] == 'queued' then\n"
    "  local idx = redis.call('LPOS', KEYS[2], ARGV[2], 'RANK', -1)\n"
    "  if idx then pos = redis.call('LLEN', KEYS[2]) - 1 - idx end\n"
    "end\n"
    "local out = {}\n"
    "for i = 1, 10 do out[i] = f[i] or '' end\n"
    "out[11] = pos\n"
    "return out\n";

/* KEYS: 1 runners  2 processing:<wid> ; ARGV: 2 wid
 * Graceful exit: every job still running for wid goes back to the front of
 * the queue uncharged, then the runner is removed. Returns how many were
 * handed back. */
static const char lua_deregister[] = PRELUDE
    "local wid, n = ARGV[2], 0\n"
    "for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do\n"
    "  local jk = P .. ':job:' .. id\n"
    "  local f = redis.call('HMGET', jk, 'state', 'worker')\n"
    "  if f[1] == 'running' and f[2] == wid then\n"
    "    redis.call('HINCRBY', jk, 'attempts', -1)\n"
    "    redis.call('HINCRBY', P .. ':stats', 'released', 1)\n"
    "    requeue(id, nil)\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "redis.call('DEL', KEYS[2], P .. ':runner:' .. wid)\n"
    "redis.call('ZREM', KEYS[1], wid)\n"
    "return n\n";

/* clang-format on */

static const struct {
    const char *name;
    const char *src;
} queue_lua_table[QUEUE_LUA_COUNT] = {
    [QUEUE_LUA_ENQUEUE] = {"enqueue", lua_enqueue},
    [QUEUE_LUA_CLAIM] = {"claim", lua_claim},
    [QUEUE_LUA_HEARTBEAT] = {"heartbeat", lua_heartbeat},
    [QUEUE_LUA_FINISH] = {"finish", lua_finish},
    [QUEUE_LUA_CANCEL] = {"cancel", lua_cancel},
    [QUEUE_LUA_REAP] = {"reap", lua_reap},
    [QUEUE_LUA_STATS] = {"stats", lua_stats},
    [QUEUE_LUA_INFO] = {"info", lua_info},
    [QUEUE_LUA_DEREGISTER] = {"deregister", lua_deregister},
    [QUEUE_LUA_RUNNERS] = {"runners", lua_runners},
};

const char *queue_lua_source(enum queue_script s)
{
    return queue_lua_table[s].src;
}

const char *queue_lua_name(enum queue_script s)
{
    return queue_lua_table[s].name;
}
