/*
** timer.c -- core.loop's Timer: loop.timer(after, repeat, fn) runs fn in a
** new coroutine after `after` seconds, then every `repeat` seconds (0:
** once); close (or stop) ends it. A one-shot timer closes itself once it
** has fired.
**
** Lifetime rules (liolib / luv): every userdata is created closed before
** its resource is acquired; close is idempotent and is also __gc and
** __close; an object with an active watcher is pinned in the registry
** (self_ref) and every callback anchors it on the main stack while it runs.
*/
#include "core.h"

#define TIMER_MT "core.loop.Timer"

typedef struct {
  ev_timer w;
  int fn_ref;
  int self_ref;
  int open;
} Timer;

static void
timer_release(Timer *t)
{
  if (!t->open)
    return;
  t->open = 0;
  ev_timer_stop(sb_loop(), &t->w);
  sb_unref(&t->fn_ref);
  sb_unref(&t->self_ref);
}

/* Protected: run the timer's function in a new coroutine. */
static int
timer_p(lua_State *L)
{
  Timer *t = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
  sb_spawn(L, 0);
  return 0;
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Timer *t = w->data;
  sb_anchor(t->self_ref);
  sb_protect(timer_p, t, "core.loop: timer");
  if (t->open && !ev_is_active(&t->w))
    timer_release(t);           /* a one-shot timer is done */
  sb_unanchor();
}

static int
timer_close(lua_State *L)
{
  timer_release(luaL_checkudata(L, 1, TIMER_MT));
  return 0;
}

int
sb_loop_timer(lua_State *L)
{
  double after = luaL_checknumber(L, 1);
  double repeat = luaL_optnumber(L, 2, 0.);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!(after > 0))
    after = 0;
  if (!(repeat > 0))
    repeat = 0;
  Timer *t = lua_newuserdatauv(L, sizeof *t, 0);
  t->fn_ref = t->self_ref = LUA_NOREF;
  t->open = 0;
  ev_now_update(sb_loop());     /* as loop.sleep: from now, not from the
                                   time cached when the loop last ran */
  ev_timer_init(&t->w, timer_cb, after, repeat);
  t->w.data = t;
  luaL_setmetatable(L, TIMER_MT);
  sb_pin_value(L, 3, &t->fn_ref);
  sb_pin_value(L, -1, &t->self_ref);
  t->open = 1;
  ev_timer_start(sb_loop(), &t->w);
  return 1;
}

static const luaL_Reg timer_meth[] = {
  { "close", timer_close },
  { "stop", timer_close },
  { NULL, NULL }
};

void
sb_timer_open(lua_State *L)
{
  static const luaL_Reg meta[] = {
    { "__gc", timer_close },
    { "__close", timer_close },
    { NULL, NULL }
  };
  sb_createmeta(L, TIMER_MT, meta, timer_meth);
}
