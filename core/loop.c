/*
** loop.c -- core.loop: the libev event loop as Lua sees it. This file is
** the module (run, stop, now, time, spawn, the error handler) and
** registers its types, one file each: listener.c (loop.listen,
** loop.listen_fd), stream.c (loop.connect, loop.stream), timer.c
** (loop.timer), signal.c (loop.signal) and wait.c (loop.sleep, loop.wait,
** loop.wake). The coroutine scheduling they share, the deferred resumes
** included, is sched.c.
**
** Coroutines wait in C (sleep, wait, stream reads, flush, connect): the C
** function pins the running coroutine, arms a watcher and yields; the
** watcher's callback resumes it through sb_resume_ref. Everything Lua that
** a callback starts runs protected (sb_resume_ref, sb_protect) and
** through sb_spawn / sb_resume_ref, which route errors to the error
** handler, so no error is fatal and none unwinds through ev_run.
*/
#include "core.h"


static int loop_running = 0;

static int
l_run(lua_State *L)
{
  if (loop_running)
    return luaL_error(L, "loop.run: the loop is already running");
  loop_running = 1;
  ev_run(sb_loop(), 0);
  loop_running = 0;
  return 0;
}

static int
l_stop(lua_State *L)
{
  (void)L;
  ev_break(sb_loop(), EVBREAK_ALL);
  return 0;
}

static int
l_now(lua_State *L)
{
  lua_pushnumber(L, ev_now(sb_loop()));
  return 1;
}

static int
l_time(lua_State *L)
{
  lua_pushnumber(L, sb_monotonic());
  return 1;
}

static int
l_spawn(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TFUNCTION);
  sb_spawn(L, lua_gettop(L) - 1);
  return 0;
}

static int
l_set_error_handler(lua_State *L)
{
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, SB_ERRHANDLER_KEY);
  return 0;
}

static const luaL_Reg loop_funcs[] = {
  { "run", l_run },
  { "stop", l_stop },
  { "now", l_now },
  { "time", l_time },
  { "spawn", l_spawn },
  { "set_error_handler", l_set_error_handler },
  { "sleep", sb_loop_sleep },
  { "wait", sb_loop_wait },
  { "wake", sb_loop_wake },
  { "timer", sb_loop_timer },
  { "signal", sb_loop_signal },
  { "listen", sb_loop_listen },
  { "listen_fd", sb_loop_listen_fd },
  { "connect", sb_loop_connect },
  { "stream", sb_loop_stream },
  { NULL, NULL }
};

int
luaopen_core_loop(lua_State *L)
{
  sb_stream_open(L);
  sb_listener_open(L);
  sb_timer_open(L);
  sb_signal_open(L);
  sb_wait_open(L);
  sb_sched_open(L);
  luaL_newlib(L, loop_funcs);
  return 1;
}
