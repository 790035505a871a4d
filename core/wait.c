/*
** wait.c -- core.loop's waits: loop.sleep(secs) (a Sleep: a one-shot
** ev_timer that resumes the sleeping coroutine), loop.wait() (park the
** running coroutine) and loop.wake(co, ...) (resume a parked one with
** values, after the next poll: never from inside the caller).
*/
#include "core.h"

#define SLEEP_MT   "core.loop.Sleep"
#define PARKED_KEY "core.loop.parked"

typedef struct {
  ev_timer w;
  int co_ref;
  int self_ref;
} Sleep;

static void
sleep_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Sleep *sl = w->data;
  int co = sl->co_ref;
  sl->co_ref = LUA_NOREF;
  sb_unref(&sl->self_ref);         /* sl may be collected from here on */
  sb_resume_ref(co, sb_push_true, NULL);
}

static int
sleep_gc(lua_State *L)
{
  Sleep *sl = luaL_checkudata(L, 1, SLEEP_MT);
  ev_timer_stop(sb_loop(), &sl->w);
  return 0;
}

int
sb_loop_sleep(lua_State *L)
{
  double secs = luaL_checknumber(L, 1);
  sb_check_yieldable(L, "loop.sleep");
  if (!(secs > 0))
    secs = 0;
  Sleep *sl = lua_newuserdatauv(L, sizeof *sl, 0);
  sl->co_ref = sl->self_ref = LUA_NOREF;
  ev_now_update(sb_loop());     /* measure from now, not the loop's
                                   cached time */
  ev_timer_init(&sl->w, sleep_cb, secs, 0.);
  sl->w.data = sl;
  luaL_setmetatable(L, SLEEP_MT);
  sb_pin_value(L, -1, &sl->self_ref);
  sl->co_ref = sb_pin(L);
  ev_timer_start(sb_loop(), &sl->w);
  return lua_yield(L, 0);
}

int
sb_loop_wait(lua_State *L)
{
  sb_check_yieldable(L, "loop.wait");
  lua_getfield(L, LUA_REGISTRYINDEX, PARKED_KEY);
  lua_pushthread(L);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);            /* parked[co] = true pins co */
  lua_pop(L, 1);
  return lua_yield(L, 0);
}

int
sb_loop_wake(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TTHREAD);
  int nargs = lua_gettop(L) - 1;
  lua_getfield(L, LUA_REGISTRYINDEX, PARKED_KEY);
  lua_pushvalue(L, 1);
  int parked = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 1);
  if (!parked || lua_status(lua_tothread(L, 1)) != LUA_YIELD) {
    if (parked) {               /* resumed or closed by someone else */
      lua_pushvalue(L, 1);
      lua_pushnil(L);
      lua_rawset(L, -3);
    }
    lua_pop(L, 1);
    lua_pushboolean(L, 0);
    return 1;
  }
  int argref = LUA_NOREF;
  if (nargs > 0) {
    lua_createtable(L, nargs, 0);
    for (int i = 1; i <= nargs; i++) {
      lua_pushvalue(L, i + 1);
      lua_rawseti(L, -2, i);
    }
    argref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pushvalue(L, 1);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);            /* parked[co] = nil: the queue pins it */
  lua_pop(L, 1);
  lua_pushboolean(L, sb_defer_resume(ref, argref, nargs, NULL) == 0);
  return 1;
}


void
sb_wait_open(lua_State *L)
{
  static const luaL_Reg meta[] = {
    { "__gc", sleep_gc },
    { NULL, NULL }
  };
  sb_createmeta(L, SLEEP_MT, meta, NULL);
  if (lua_getfield(L, LUA_REGISTRYINDEX, PARKED_KEY) != LUA_TTABLE) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, PARKED_KEY);
  }
  lua_pop(L, 1);
}
