/*
** signal.c -- core.loop's Signal: loop.signal(name, fn) runs fn(name) in a
** new coroutine each time the process gets SIGTERM, SIGINT, SIGHUP or
** SIGUSR1; close ends it. A signal watcher alone keeps no loop running.
**
** Lifetime rules (liolib / luv): every userdata is created closed before
** its resource is acquired; close is idempotent and is also __gc and
** __close; an object with an active watcher is pinned in the registry
** (self_ref) and every callback anchors it on the main stack while it runs.
*/
#include <signal.h>
#include <string.h>

#include "core.h"

#define SIGNAL_MT "core.loop.Signal"

typedef struct {
  ev_signal w;
  int fn_ref;
  int self_ref;
  int open;
  const char *name;
} Signal;

static const struct {
  const char *name;
  int signum;
} signal_names[] = {
  { "TERM", SIGTERM }, { "INT", SIGINT }, { "HUP", SIGHUP },
  { "USR1", SIGUSR1 }, { NULL, 0 }
};

/* Protected: run the handler with the signal's name in a new coroutine. */
static int
signal_p(lua_State *L)
{
  Signal *sg = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, sg->fn_ref);
  lua_pushstring(L, sg->name);
  sb_spawn(L, 1);
  return 0;
}

static void
signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
  (void)loop;
  (void)revents;
  Signal *sg = w->data;
  sb_anchor(sg->self_ref);
  sb_protect(signal_p, sg, "core.loop: signal");
  sb_unanchor();
}

static int
signal_close(lua_State *L)
{
  Signal *sg = luaL_checkudata(L, 1, SIGNAL_MT);
  if (!sg->open)
    return 0;
  sg->open = 0;
  ev_ref(sb_loop());            /* undo the ev_unref of sb_loop_signal */
  ev_signal_stop(sb_loop(), &sg->w);
  sb_unref(&sg->fn_ref);
  sb_unref(&sg->self_ref);
  return 0;
}

int
sb_loop_signal(lua_State *L)
{
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int i;
  for (i = 0; signal_names[i].name != NULL; i++)
    if (strcmp(name, signal_names[i].name) == 0)
      break;
  if (signal_names[i].name == NULL)
    return luaL_argerror(L, 1, "expected \"TERM\", \"INT\", \"HUP\" or \"USR1\"");
  Signal *sg = lua_newuserdatauv(L, sizeof *sg, 0);
  sg->fn_ref = sg->self_ref = LUA_NOREF;
  sg->open = 0;
  sg->name = signal_names[i].name;
  ev_signal_init(&sg->w, signal_cb, signal_names[i].signum);
  sg->w.data = sg;
  luaL_setmetatable(L, SIGNAL_MT);
  sb_pin_value(L, 2, &sg->fn_ref);
  sb_pin_value(L, -1, &sg->self_ref);
  sg->open = 1;
  ev_signal_start(sb_loop(), &sg->w);
  ev_unref(sb_loop());          /* a signal watcher alone keeps no loop */
  return 1;
}

static const luaL_Reg signal_meth[] = {
  { "close", signal_close },
  { NULL, NULL }
};

void
sb_signal_open(lua_State *L)
{
  static const luaL_Reg meta[] = {
    { "__gc", signal_close },
    { "__close", signal_close },
    { NULL, NULL }
  };
  sb_createmeta(L, SIGNAL_MT, meta, signal_meth);
}
