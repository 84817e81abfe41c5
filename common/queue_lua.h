/*
 * queue_lua: the Lua scripts behind every atomic queue transition.
 *
 * Kept apart from queue.c so the protocol can be read in one place. Each
 * script is the shared prelude followed by its body; queue.c runs them with
 * EVALSHA and falls back to EVAL after NOSCRIPT (a restarted Redis has an
 * empty script cache).
 */
#pragma once

enum queue_script {
    QUEUE_LUA_ENQUEUE,
    QUEUE_LUA_CLAIM,
    QUEUE_LUA_HEARTBEAT,
    QUEUE_LUA_FINISH,
    QUEUE_LUA_CANCEL,
    QUEUE_LUA_REAP,
    QUEUE_LUA_STATS,
    QUEUE_LUA_INFO,
    QUEUE_LUA_DEREGISTER,
    QUEUE_LUA_RUNNERS,
    QUEUE_LUA_COUNT
};

/* The full source of a script (prelude included); a static string. */
const char *queue_lua_source(enum queue_script s);

/* A short name for log lines ("enqueue", "claim", ...). */
const char *queue_lua_name(enum queue_script s);
