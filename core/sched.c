/*
** sched.c -- coroutine scheduling shared by the core.* modules.
** A C operation that waits pins the running coroutine (sb_pin), arms a
** libev watcher and returns lua_yield(); the watcher's callback pushes
** the results and resumes it (sb_resume_ref). Every error raised inside a
** coroutine ends in one handler with a traceback; none is fatal.
**
** A libev callback runs below ev_run, where no Lua error may unwind (it
** would leave ev_run, loop.run and whatever follows it -- the audit
** flush -- behind). So all the Lua work a callback does runs protected:
** sb_resume_ref pushes and resumes inside a lua_pcall, sb_protect runs a
** callback's own Lua code (creating a coroutine, a userdata) in one, and
** reporting an error is itself protected. A memory error there (the
** ceiling of core.mem, or a real one) goes to the error handler.
**
** Also here: the deferred resumes (loop.wake, stream:close) and the
** helpers every core module shares (sb_pushfail, sb_createmeta).
*/
#include <stdio.h>
#include <stdlib.h>
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
  return sb_pushfail(L, msg);
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

int
sb_pushfail(lua_State *L, const char *msg)
{
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  return 2;
}

void
sb_createmeta(lua_State *L, const char *name, const luaL_Reg *meta,
              const luaL_Reg *methods)
{
  if (!luaL_newmetatable(L, name)) {
    lua_pop(L, 1);
    return;
  }
  luaL_setfuncs(L, meta, 0);
  if (methods != NULL) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

void
sb_lockmeta(lua_State *L, const char *name)
{
  luaL_getmetatable(L, name);
  lua_pushliteral(L, "locked");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

void
sb_pin_value(lua_State *L, int idx, int *ref)
{
  if (*ref != LUA_NOREF)
    return;
  lua_pushvalue(L, idx);
  *ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

int
sb_push_true(lua_State *co, void *ud)
{
  (void)ud;
  lua_pushboolean(co, 1);
  return 1;
}

/* The error object at idx as text, without converting it (a conversion
** allocates). */
static const char *
error_text(lua_State *L, int idx)
{
  return lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx)
                                         : "(error object is not a string)";
}

typedef struct {
  const char *msg;
} Report;

/* Protected: call the error handler with the message; pushes whether it
** took it. */
static int
report_p(lua_State *L)
{
  const Report *r = lua_touserdata(L, 1);
  if (lua_getfield(L, LUA_REGISTRYINDEX, SB_ERRHANDLER_KEY) != LUA_TFUNCTION) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushstring(L, r->msg);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "switchboard: error handler failed: %s\n",
            error_text(L, -1));
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Hand msg to the Lua error handler (called on L, which is running), or
** print it when there is none, the handler fails too, or there is not
** even the memory to call it. Never raises. */
static void
report_on(lua_State *L, const char *msg)
{
  if (L == NULL) {
    fprintf(stderr, "switchboard: %s\n", msg);
    return;
  }
  int top = lua_gettop(L);
  int handled = 0;
  Report r = { msg };
  if (lua_checkstack(L, 4)) {
    lua_pushcfunction(L, report_p);
    lua_pushlightuserdata(L, &r);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK)
      handled = lua_toboolean(L, -1);
  }
  lua_settop(L, top);
  if (!handled) {
    fprintf(stderr, "switchboard: %s\n", msg);
    fflush(stderr);
  }
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

typedef struct {
  lua_State *co;
  sb_push_fn push;
  void *ud;
  int started;          /* the values were handed over: co ran */
} Resume;

/* Protected (on the main state): push the values for co here, move them
** over and resume it. */
static int
resume_p(lua_State *L)
{
  Resume *a = lua_touserdata(L, 1);
  int nargs = a->push ? a->push(L, a->ud) : 0;
  if (!lua_checkstack(a->co, nargs + 1))
    return luaL_error(L, "stack overflow");
  lua_xmove(L, a->co, nargs);
  a->started = 1;
  int nres = 0;
  int status = lua_resume(a->co, L, nargs, &nres);
  finish(L, a->co, status, nres);
  return 0;
}

void
sb_resume_ref(int ref, sb_push_fn push, void *ud)
{
  lua_State *L = main_L;
  if (ref == LUA_NOREF || ref == LUA_REFNIL)
    return;
  if (!lua_checkstack(L, 4)) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    report_on(L, "coroutine not resumed: stack overflow");
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_State *co = lua_tothread(L, -1);
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (co == NULL || lua_status(co) != LUA_YIELD) {
    lua_pop(L, 1);
    return;
  }
  /* keep co on L's stack while it runs, so it cannot be collected */
  Resume a = { co, push, ud, 0 };
  lua_pushcfunction(L, resume_p);
  lua_pushlightuserdata(L, &a);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* the values could not be made (or the error of co not reported):
    ** co is not resumed again; close it, as an error in it would */
    char msg[512];
    snprintf(msg, sizeof msg, "coroutine not resumed: %s",
             error_text(L, -1));
    lua_pop(L, 1);
    if (!a.started || lua_status(co) != LUA_YIELD)
      lua_resetthread(co);
    report_on(L, msg);
  }
  lua_pop(L, 1);
}

void
sb_start(lua_State *L, int nargs)
{
  lua_State *co = lua_tothread(L, -(nargs + 2));
  lua_xmove(L, co, nargs + 1);
  int nres = 0;
  int status = lua_resume(co, L, nargs, &nres);
  finish(L, co, status, nres);
  lua_pop(L, 1);                        /* the thread */
}

void
sb_spawn(lua_State *L, int nargs)
{
  lua_newthread(L);
  lua_insert(L, -(nargs + 2));          /* thread below function */
  sb_start(L, nargs);
}

int
sb_protect(lua_CFunction fn, void *ud, const char *what)
{
  lua_State *L = main_L;
  int top = lua_gettop(L);
  int status = LUA_ERRMEM;
  const char *err = "stack overflow";
  if (lua_checkstack(L, 4)) {
    lua_pushcfunction(L, fn);
    lua_pushlightuserdata(L, ud);
    status = lua_pcall(L, 1, 0, 0);
    if (status != LUA_OK)
      err = error_text(L, -1);
  }
  if (status == LUA_OK) {
    lua_settop(L, top);
    return 0;
  }
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s", what, err);
  lua_settop(L, top);
  report_on(L, msg);
  return -1;
}

/*
** {======================================================
** Deferred resumes: loop.wake and stream:close never resume a coroutine
** from inside the caller; they queue it, and an ev_check watcher runs the
** queue after the next poll (an ev_idle keeps that poll from blocking).
** =======================================================
*/

#define QUEUE_KEY "core.loop.state"

typedef struct {
  int ref;              /* pinned coroutine */
  int argref;           /* table of wake's extra values, or LUA_NOREF */
  int nargs;
  const char *err;      /* resume with nil, err (when not NULL) */
} Pending;

static Pending *q_items = NULL;
static size_t q_len = 0, q_cap = 0;
static ev_idle q_idle;
static ev_check q_check;
static int q_ready = 0;          /* watchers initialised, state alive */

static int
push_pending(lua_State *co, void *ud)
{
  Pending *p = ud;
  if (p->err != NULL) {
    return sb_pushfail(co, p->err);
  }
  if (p->argref == LUA_NOREF)
    return 0;
  if (!lua_checkstack(co, p->nargs + 2)) {
    sb_unref(&p->argref);
    return 0;
  }
  lua_rawgeti(co, LUA_REGISTRYINDEX, p->argref);
  for (int i = 1; i <= p->nargs; i++)
    lua_rawgeti(co, -i, i);
  lua_remove(co, -(p->nargs + 1));
  sb_unref(&p->argref);
  return p->nargs;
}

static void
q_check_cb(struct ev_loop *loop, ev_check *w, int revents)
{
  (void)w;
  (void)revents;
  size_t n = q_len;             /* resumes queued now wait one more turn */
  for (size_t i = 0; i < n; i++) {
    Pending p = q_items[i];     /* copy: the array may grow meanwhile */
    sb_resume_ref(p.ref, push_pending, &p);
    sb_unref(&p.argref);
  }
  if (q_items != NULL) {
    memmove(q_items, q_items + n, (q_len - n) * sizeof *q_items);
    q_len -= n;
  }
  if (q_len == 0) {
    ev_idle_stop(loop, &q_idle);
    ev_check_stop(loop, &q_check);
  }
}

static void
q_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
  (void)loop;
  (void)w;
  (void)revents;
}

int
sb_defer_resume(int ref, int argref, int nargs, const char *err)
{
  if (!q_ready) {
    sb_unref(&ref);
    sb_unref(&argref);
    return -1;
  }
  if (q_len == q_cap) {
    size_t cap = q_cap ? q_cap * 2 : 64;
    Pending *items = realloc(q_items, cap * sizeof *items);
    if (items == NULL) {
      sb_unref(&ref);
      sb_unref(&argref);
      sb_report_error("core.loop: out of memory queueing a resume");
      return -1;
    }
    q_items = items;
    q_cap = cap;
  }
  q_items[q_len].ref = ref;
  q_items[q_len].argref = argref;
  q_items[q_len].nargs = nargs;
  q_items[q_len].err = err;
  q_len++;
  ev_idle_start(sb_loop(), &q_idle);
  ev_check_start(sb_loop(), &q_check);
  return 0;
}

/* __gc of the queue's state (lua_close): stop the queue, free it. */
static int
queue_gc(lua_State *L)
{
  (void)L;
  if (q_ready) {
    ev_idle_stop(sb_loop(), &q_idle);
    ev_check_stop(sb_loop(), &q_check);
    q_ready = 0;
  }
  free(q_items);
  q_items = NULL;
  q_len = q_cap = 0;
  return 0;
}

void
sb_sched_open(lua_State *L)
{
  if (lua_getfield(L, LUA_REGISTRYINDEX, QUEUE_KEY) == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    lua_newtable(L);
    lua_pushcfunction(L, queue_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, QUEUE_KEY);
    ev_idle_init(&q_idle, q_idle_cb);
    ev_check_init(&q_check, q_check_cb);
    q_ready = 1;
  }
  lua_pop(L, 1);
}

/* }====================================================== */
