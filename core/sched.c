/*
** sched.c -- coroutine scheduling shared by the core.* modules.
** A C operation that waits pins the running coroutine (sb_pin), arms a
** libev watcher and returns lua_yield(); the watcher's callback pushes
** the results and resumes it (sb_resume_ref). Every error raised inside a
** coroutine ends in one handler with a traceback; none is fatal.
*/
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core.h"
#include "netbuf.h"

static lua_State *main_L = NULL;

struct ev_loop *
sb_loop(void)
{
  return EV_DEFAULT;
}

void
sb_set_main(lua_State *L)
{
  main_L = L;
}

lua_State *
sb_main(void)
{
  return main_L;
}

double
sb_monotonic(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void
sb_check_yieldable(lua_State *L, const char *what)
{
  if (!lua_isyieldable(L))
    luaL_error(L, "%s must be called from a runtime coroutine (loop.spawn)",
               what);
}

int
sb_pin(lua_State *L)
{
  lua_pushthread(L);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

void
sb_unref(int *ref)
{
  if (*ref != LUA_NOREF && *ref != LUA_REFNIL)
    luaL_unref(main_L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}

void
sb_anchor(int ref)
{
  lua_checkstack(main_L, 8);
  if (ref != LUA_NOREF)
    lua_rawgeti(main_L, LUA_REGISTRYINDEX, ref);
  else
    lua_pushnil(main_L);
}

void
sb_unanchor(void)
{
  lua_pop(main_L, 1);
}

int
sb_push_errno(lua_State *L, const char *what, int err)
{
  char msg[256];
  nb_errmsg(msg, sizeof msg, what, err);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

int
sb_traceback(lua_State *L)
{
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL)
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Hand msg to the Lua error handler (called on L, which is running), or
** print it when there is none or the handler fails too. */
static void
report_on(lua_State *L, const char *msg)
{
  if (L == NULL) {
    fprintf(stderr, "switchboard: %s\n", msg);
    return;
  }
  int top = lua_gettop(L);
  if (lua_checkstack(L, 4)
      && lua_getfield(L, LUA_REGISTRYINDEX, SB_ERRHANDLER_KEY)
             == LUA_TFUNCTION) {
    lua_pushstring(L, msg);
    if (lua_pcall(L, 1, 0, 0) == LUA_OK) {
      lua_settop(L, top);
      return;
    }
    fprintf(stderr, "switchboard: error handler failed: %s\n",
            lua_tostring(L, -1));
  }
  fprintf(stderr, "switchboard: %s\n", msg);
  fflush(stderr);
  lua_settop(L, top);
}

void
sb_report_error(const char *msg)
{
  report_on(main_L, msg);
}

/* After a resume of co (started from L): drop what it yielded or
** returned; on error, report it with co's traceback and reset co. */
static void
finish(lua_State *L, lua_State *co, int status, int nres)
{
  if (status == LUA_OK || status == LUA_YIELD) {
    lua_pop(co, nres);
    return;
  }
  const char *msg = lua_tostring(co, -1);
  char buf[64];
  if (msg == NULL) {
    snprintf(buf, sizeof buf, "(error object is a %s value)",
             luaL_typename(co, -1));
    msg = buf;
  }
  luaL_traceback(L, co, msg, 0);
  report_on(L, lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_resetthread(co);
}

void
sb_resume_ref(int ref, sb_push_fn push, void *ud)
{
  lua_State *L = main_L;
  if (ref == LUA_NOREF || ref == LUA_REFNIL)
    return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_State *co = lua_tothread(L, -1);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (co == NULL || lua_status(co) != LUA_YIELD) {
    lua_pop(L, 1);
    return;
  }
  /* keep co on L's stack while it runs, so it cannot be collected */
  int nargs = push ? push(co, ud) : 0;
  int nres = 0;
  int status = lua_resume(co, L, nargs, &nres);
  finish(L, co, status, nres);
  lua_pop(L, 1);
}

void
sb_spawn(lua_State *L, int nargs)
{
  lua_State *co = lua_newthread(L);
  lua_insert(L, -(nargs + 2));          /* thread below function */
  lua_xmove(L, co, nargs + 1);
  int nres = 0;
  int status = lua_resume(co, L, nargs, &nres);
  finish(L, co, status, nres);
  lua_pop(L, 1);                        /* the thread */
}
