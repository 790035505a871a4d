/*
** loop.c -- core.loop: the libev event loop as Lua sees it.
** Coroutines wait in C (sleep, wait, stream reads, flush, connect): the C
** function pins the running coroutine, arms a watcher and yields; the
** watcher's callback resumes it through sb_resume_ref. Everything Lua that
** a callback starts runs through sb_spawn / sb_resume_ref, which route
** errors to the error handler, so no error is fatal.
**
** Lifetime rules (liolib / luv): every userdata is created closed before
** its resource is acquired; close is idempotent and is also __gc and
** __close; an object with an active watcher is pinned in the registry
** (self_ref) and every callback anchors it on the main stack while it runs.
*/
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "core.h"
#include "netbuf.h"

#define STREAM_MT   "core.loop.Stream"
#define LISTENER_MT "core.loop.Listener"
#define TIMER_MT    "core.loop.Timer"
#define SIGNAL_MT   "core.loop.Signal"
#define SLEEP_MT    "core.loop.Sleep"
#define STATE_KEY   "core.loop.state"
#define PARKED_KEY  "core.loop.parked"

#define WRITE_CAP       (16 * 1024 * 1024)
#define CONNECT_TIMEOUT 10.0

static int loop_running = 0;

static int
push_fail(lua_State *L, const char *msg)
{
  lua_pushnil(L);
  lua_pushstring(L, msg);
  return 2;
}

/* [-0, +0, m] Pin the value at idx in *ref unless already pinned. */
static void
pin_value(lua_State *L, int idx, int *ref)
{
  if (*ref != LUA_NOREF)
    return;
  lua_pushvalue(L, idx);
  *ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static int
push_true(lua_State *co, void *ud)
{
  (void)ud;
  lua_pushboolean(co, 1);
  return 1;
}

/*
** {======================================================
** Deferred resumes: loop.wake and stream:close never resume a coroutine
** from inside the caller; they queue it, and an ev_check watcher runs the
** queue after the next poll (an ev_idle keeps that poll from blocking).
** =======================================================
*/

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
    lua_pushnil(co);
    lua_pushstring(co, p->err);
    return 2;
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

/* Queue the resume of the coroutine pinned by ref (the ref moves to the
** queue). Returns 0, or -1 when it could not be queued (ref dropped). */
static int
q_push(int ref, int argref, int nargs, const char *err)
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

/* __gc of the module state (lua_close): stop the queue, free it. */
static int
state_gc(lua_State *L)
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

/* }====================================================== */

/*
** {======================================================
** run, stop, now, time, spawn, error handler, sleep, wait, wake
** =======================================================
*/

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
  sb_resume_ref(co, push_true, NULL);
}

static int
sleep_gc(lua_State *L)
{
  Sleep *sl = luaL_checkudata(L, 1, SLEEP_MT);
  ev_timer_stop(sb_loop(), &sl->w);
  return 0;
}

static int
l_sleep(lua_State *L)
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
  pin_value(L, -1, &sl->self_ref);
  sl->co_ref = sb_pin(L);
  ev_timer_start(sb_loop(), &sl->w);
  return lua_yield(L, 0);
}

static int
l_wait(lua_State *L)
{
  sb_check_yieldable(L, "loop.wait");
  lua_getfield(L, LUA_REGISTRYINDEX, PARKED_KEY);
  lua_pushthread(L);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);            /* parked[co] = true pins co */
  lua_pop(L, 1);
  return lua_yield(L, 0);
}

static int
l_wake(lua_State *L)
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
  lua_pushboolean(L, q_push(ref, argref, nargs, NULL) == 0);
  return 1;
}

/* }====================================================== */

/*
** {======================================================
** Timer and Signal
** =======================================================
*/

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

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Timer *t = w->data;
  lua_State *L = sb_main();
  sb_anchor(t->self_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
  sb_spawn(L, 0);
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

static int
l_timer(lua_State *L)
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
  pin_value(L, 3, &t->fn_ref);
  pin_value(L, -1, &t->self_ref);
  t->open = 1;
  ev_timer_start(sb_loop(), &t->w);
  return 1;
}

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

static void
signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
  (void)loop;
  (void)revents;
  Signal *sg = w->data;
  lua_State *L = sb_main();
  sb_anchor(sg->self_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, sg->fn_ref);
  lua_pushstring(L, sg->name);
  sb_spawn(L, 1);
  sb_unanchor();
}

static int
signal_close(lua_State *L)
{
  Signal *sg = luaL_checkudata(L, 1, SIGNAL_MT);
  if (!sg->open)
    return 0;
  sg->open = 0;
  ev_ref(sb_loop());            /* undo the ev_unref of l_signal */
  ev_signal_stop(sb_loop(), &sg->w);
  sb_unref(&sg->fn_ref);
  sb_unref(&sg->self_ref);
  return 0;
}

static int
l_signal(lua_State *L)
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
  pin_value(L, 2, &sg->fn_ref);
  pin_value(L, -1, &sg->self_ref);
  sg->open = 1;
  ev_signal_start(sb_loop(), &sg->w);
  ev_unref(sb_loop());          /* a signal watcher alone keeps no loop */
  return 1;
}

/* }====================================================== */

/*
** {======================================================
** Stream
** =======================================================
*/

enum { ST_OPEN, ST_CONNECTING };
enum { RD_LINE, RD_SOME };

typedef struct {
  ev_io rio;
  ev_io wio;
  ev_timer rtimer;              /* read timeout; connect retries */
  ev_timer ftimer;              /* flush timeout */
  int fd;
  int open;
  int noclose;                  /* fds 0-2 stay open */
  int oflags;                   /* their file status flags, restored */
  int state;
  NbBuf in;                     /* input */
  size_t iscan;                 /* how many input bytes have no '\n' */
  int discard;                  /* dropping up to the next '\n' */
  int eof;
  int rerr;
  int rmode;
  size_t rmax;
  NbBuf out;                    /* output */
  size_t wcap;                  /* the most out may hold */
  int werr;
  int read_ref;                 /* coroutine waiting in read/connect */
  int flush_ref;                /* coroutine waiting in flush */
  int self_ref;                 /* pinned while anything waits */
  struct sockaddr_un *caddr;    /* connect target while connecting */
  double cdeadline;
  double cdelay;
} Stream;

/* A read result, pushed on the caller's or the resumed coroutine's stack. */
typedef struct {
  Stream *s;
  int data;                     /* push string of len, then consume */
  size_t len, consume;
  const char *err;
  char errbuf[128];
} ReadRes;

static void read_cb(struct ev_loop *, ev_io *, int);
static void write_cb(struct ev_loop *, ev_io *, int);
static void rtimer_cb(struct ev_loop *, ev_timer *, int);
static void ftimer_cb(struct ev_loop *, ev_timer *, int);

static int
stream_needs_pin(const Stream *s)
{
  return s->open && (s->read_ref != LUA_NOREF || s->flush_ref != LUA_NOREF
                     || s->out.len > 0 || s->state == ST_CONNECTING);
}

static void
stream_update_pin(Stream *s)
{
  if (!stream_needs_pin(s))
    sb_unref(&s->self_ref);
}

/* [-0, +1, m] A new Stream, closed. */
static Stream *
stream_new(lua_State *L)
{
  Stream *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->fd = -1;
  s->open = 0;
  s->oflags = -1;
  s->wcap = WRITE_CAP;
  s->read_ref = s->flush_ref = s->self_ref = LUA_NOREF;
  ev_io_init(&s->rio, read_cb, 0, EV_READ);
  ev_io_init(&s->wio, write_cb, 0, EV_WRITE);
  ev_timer_init(&s->rtimer, rtimer_cb, 0., 0.);
  ev_timer_init(&s->ftimer, ftimer_cb, 0., 0.);
  s->rio.data = s->wio.data = s->rtimer.data = s->ftimer.data = s;
  luaL_setmetatable(L, STREAM_MT);
  return s;
}

static void
stream_attach(Stream *s, int fd, int noclose)
{
  s->fd = fd;
  s->noclose = noclose;
  s->open = 1;
  s->state = ST_OPEN;
  ev_io_set(&s->rio, fd, EV_READ);
  ev_io_set(&s->wio, fd, EV_WRITE);
}

/* Close now; waiters are queued to resume with nil, "closed". Never runs
** Lua code (it is also __gc). */
static void
stream_release(Stream *s)
{
  if (!s->open)
    return;
  struct ev_loop *loop = sb_loop();
  s->open = 0;
  ev_io_stop(loop, &s->rio);
  ev_io_stop(loop, &s->wio);
  ev_timer_stop(loop, &s->rtimer);
  ev_timer_stop(loop, &s->ftimer);
  if (s->fd >= 0 && !s->noclose)
    close(s->fd);
  else if (s->fd >= 0 && s->oflags >= 0)
    fcntl(s->fd, F_SETFL, s->oflags);
  s->fd = -1;
  nb_free(&s->in);
  nb_free(&s->out);
  s->iscan = 0;
  free(s->caddr);
  s->caddr = NULL;
  if (s->read_ref != LUA_NOREF) {
    q_push(s->read_ref, LUA_NOREF, 0, "closed");
    s->read_ref = LUA_NOREF;
  }
  if (s->flush_ref != LUA_NOREF) {
    q_push(s->flush_ref, LUA_NOREF, 0, "closed");
    s->flush_ref = LUA_NOREF;
  }
  sb_unref(&s->self_ref);
}

static Stream *
check_stream(lua_State *L)
{
  Stream *s = luaL_checkudata(L, 1, STREAM_MT);
  if (!s->open)
    luaL_error(L, "attempt to use a closed stream");
  return s;
}

static void
consume(Stream *s, size_t n)
{
  nb_consume(&s->in, n);
  s->iscan = s->iscan > n && s->in.len > 0 ? s->iscan - n : 0;
}

/* One read(): >0 bytes added, 0 EOF (s->eof), NB_AGAIN nothing yet, or
** below that an error (s->rerr). */
static ssize_t
fill(Stream *s)
{
  int err;
  ssize_t n = nb_fill(&s->in, s->fd, &err);
  if (n == 0)
    s->eof = 1;
  else if (n == NB_ERROR || n == NB_NOMEM)
    s->rerr = err;
  return n;
}

/* Is a read result at hand? Fills r and returns 1, or returns 0. */
static int
try_read(Stream *s, ReadRes *r)
{
  r->s = s;
  r->data = 0;
  r->err = NULL;
  for (;;) {
    char *base = nb_data(&s->in);
    if (s->discard) {
      char *nl = s->in.len ? memchr(base, '\n', s->in.len) : NULL;
      if (nl == NULL) {
        consume(s, s->in.len);
        break;
      }
      consume(s, (size_t)(nl - base) + 1);
      s->discard = 0;
      continue;
    }
    if (s->rmode == RD_SOME) {
      if (s->in.len == 0)
        break;
      r->data = 1;
      r->len = r->consume = s->in.len < s->rmax ? s->in.len : s->rmax;
      return 1;
    }
    char *nl = s->in.len > s->iscan
                   ? memchr(base + s->iscan, '\n', s->in.len - s->iscan)
                   : NULL;
    if (nl != NULL) {
      size_t len = (size_t)(nl - base);
      if (len > s->rmax) {
        consume(s, len + 1);
        r->err = "line too long";
        return 1;
      }
      r->data = 1;
      r->len = len;
      r->consume = len + 1;
      return 1;
    }
    s->iscan = s->in.len;
    if (s->in.len > s->rmax) {
      consume(s, s->in.len);
      s->discard = 1;
      r->err = "line too long";
      return 1;
    }
    break;
  }
  /* no complete line (or no bytes) buffered */
  if (s->eof) {
    if (s->in.len > 0 && !s->discard) {   /* the partial last line */
      r->data = 1;
      r->len = r->consume = s->in.len;
      return 1;
    }
    r->err = "closed";
    return 1;
  }
  if (s->rerr) {
    nb_errmsg(r->errbuf, sizeof r->errbuf, NULL, s->rerr);
    r->err = r->errbuf;
    return 1;
  }
  return 0;
}

static int
push_read(lua_State *co, void *ud)
{
  ReadRes *r = ud;
  if (r->data) {
    lua_pushlstring(co, nb_data(&r->s->in), r->len);
    consume(r->s, r->consume);
    return 1;
  }
  lua_pushnil(co);
  lua_pushstring(co, r->err);
  return 2;
}

/* The reader's wait is over: stop its watchers and resume it. */
static void
finish_read(Stream *s, ReadRes *r)
{
  struct ev_loop *loop = sb_loop();
  ev_io_stop(loop, &s->rio);
  ev_timer_stop(loop, &s->rtimer);
  int ref = s->read_ref;
  s->read_ref = LUA_NOREF;
  sb_resume_ref(ref, push_read, r);
}


static void
read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  (void)revents;
  Stream *s = w->data;
  sb_anchor(s->self_ref);
  if (fill(s) != NB_AGAIN && s->read_ref != LUA_NOREF) {
    ReadRes r;
    if (try_read(s, &r))
      finish_read(s, &r);
  }
  stream_update_pin(s);
  sb_unanchor();
}

static int
push_stream(lua_State *co, void *ud)
{
  Stream *s = ud;
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->self_ref);
  return 1;
}

/* The connect is over (err 0: connected): resume the connecting
** coroutine with the stream, or close it and resume with nil, err. */
static void
connect_finish(Stream *s, int err)
{
  struct ev_loop *loop = sb_loop();
  ev_io_stop(loop, &s->wio);
  ev_timer_stop(loop, &s->rtimer);
  free(s->caddr);
  s->caddr = NULL;
  s->state = ST_OPEN;
  int ref = s->read_ref;
  s->read_ref = LUA_NOREF;
  if (err == 0) {
    sb_resume_ref(ref, push_stream, s);
    return;
  }
  ReadRes r;
  r.s = s;
  r.data = 0;
  nb_errmsg(r.errbuf, sizeof r.errbuf, "connect", err);
  r.err = r.errbuf;
  stream_release(s);
  sb_resume_ref(ref, push_read, &r);
}

static int
try_connect(Stream *s)
{
  if (connect(s->fd, (struct sockaddr *)s->caddr, sizeof *s->caddr) == 0)
    return 0;
  if (errno == EISCONN)
    return 0;
  if (errno == EINTR)
    return EINPROGRESS;
  return errno;
}

/* connect() said EAGAIN (the listener's backlog is full): retry soon. */
static void
connect_retry(Stream *s)
{
  int err = try_connect(s);
  if (err == EAGAIN) {
    if (ev_now(sb_loop()) >= s->cdeadline) {
      connect_finish(s, ETIMEDOUT);
      return;
    }
    s->cdelay = s->cdelay * 2 < 0.02 ? s->cdelay * 2 : 0.02;
    ev_timer_set(&s->rtimer, s->cdelay, 0.);
    ev_timer_start(sb_loop(), &s->rtimer);
  } else if (err == EINPROGRESS) {
    ev_io_start(sb_loop(), &s->wio);
  } else {
    connect_finish(s, err);
  }
}

static void
rtimer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Stream *s = w->data;
  sb_anchor(s->self_ref);
  if (s->state == ST_CONNECTING) {
    connect_retry(s);
  } else if (s->read_ref != LUA_NOREF) {
    ReadRes r;
    r.s = s;
    r.data = 0;
    r.err = "timeout";
    finish_read(s, &r);
  }
  stream_update_pin(s);
  sb_unanchor();
}

static void
drain(Stream *s)
{
  struct ev_loop *loop = sb_loop();
  int err;
  int res = nb_drain(&s->out, s->fd, NB_WRITE, &err);
  if (res == NB_AGAIN)
    return;
  if (res == NB_ERROR)
    s->werr = err;              /* the peer is gone: the rest is dropped */
  ev_io_stop(loop, &s->wio);
  if (s->flush_ref != LUA_NOREF) {
    ev_timer_stop(loop, &s->ftimer);
    int ref = s->flush_ref;
    s->flush_ref = LUA_NOREF;
    if (s->werr) {
      ReadRes r;
      r.s = s;
      r.data = 0;
      nb_errmsg(r.errbuf, sizeof r.errbuf, NULL, s->werr);
      r.err = r.errbuf;
      sb_resume_ref(ref, push_read, &r);
    } else {
      sb_resume_ref(ref, push_true, NULL);
    }
  }
}

static void
write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)revents;
  Stream *s = w->data;
  sb_anchor(s->self_ref);
  if (s->state == ST_CONNECTING) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
      err = errno;
    if (err == EINPROGRESS)
      ;                         /* not yet */
    else if (err == EAGAIN) {
      ev_io_stop(loop, &s->wio);
      connect_retry(s);
    } else {
      connect_finish(s, err);
    }
  } else {
    drain(s);
  }
  stream_update_pin(s);
  sb_unanchor();
}

static void
ftimer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Stream *s = w->data;
  sb_anchor(s->self_ref);
  if (s->flush_ref != LUA_NOREF) {
    int ref = s->flush_ref;
    s->flush_ref = LUA_NOREF;
    ReadRes r;
    r.s = s;
    r.data = 0;
    r.err = "timeout";
    sb_resume_ref(ref, push_read, &r);
  }
  stream_update_pin(s);
  sb_unanchor();
}

static int
stream_read(lua_State *L, int mode, const char *what)
{
  Stream *s = check_stream(L);
  lua_Integer max = luaL_checkinteger(L, 2);
  luaL_argcheck(L, max > 0, 2, "max_bytes must be positive");
  double timeout = luaL_optnumber(L, 3, -1.);
  if (s->read_ref != LUA_NOREF)
    return luaL_error(L, "%s: another coroutine is already reading this "
                      "stream", what);
  s->rmode = mode;
  s->rmax = (size_t)max;
  ReadRes r;
  int got = try_read(s, &r);
  for (int i = 0; !got && i < 4; i++) {
    if (fill(s) == NB_AGAIN)
      break;
    got = try_read(s, &r);
  }
  if (got)
    return push_read(L, &r);
  sb_check_yieldable(L, what);
  s->read_ref = sb_pin(L);
  pin_value(L, 1, &s->self_ref);
  ev_io_start(sb_loop(), &s->rio);
  if (timeout >= 0) {
    ev_now_update(sb_loop());
    ev_timer_set(&s->rtimer, timeout, 0.);
    ev_timer_start(sb_loop(), &s->rtimer);
  }
  return lua_yield(L, 0);
}

static int
stream_read_line(lua_State *L)
{
  return stream_read(L, RD_LINE, "stream:read_line");
}

static int
stream_read_some(lua_State *L)
{
  return stream_read(L, RD_SOME, "stream:read_some");
}

static int
stream_write(lua_State *L)
{
  Stream *s = check_stream(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (s->state == ST_CONNECTING)
    return luaL_error(L, "stream:write: the stream is still connecting");
  if (s->werr)
    return sb_push_errno(L, NULL, s->werr);
  int err;
  int r = nb_write(&s->out, s->fd, NB_WRITE, data, len, s->wcap, &err);
  if (r == NB_ERROR) {
    s->werr = err;
    return sb_push_errno(L, NULL, s->werr);
  }
  if (r == NB_FULL || r == NB_NOMEM) {
    stream_release(s);
    return push_fail(L, r == NB_FULL ? "write buffer full" : "out of memory");
  }
  if (r > 0) {
    pin_value(L, 1, &s->self_ref);
    ev_io_start(sb_loop(), &s->wio);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int
stream_flush(lua_State *L)
{
  Stream *s = check_stream(L);
  double timeout = luaL_optnumber(L, 2, -1.);
  if (s->werr)
    return sb_push_errno(L, NULL, s->werr);
  if (s->out.len == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s->flush_ref != LUA_NOREF)
    return luaL_error(L, "stream:flush: another coroutine is already "
                      "flushing this stream");
  sb_check_yieldable(L, "stream:flush");
  s->flush_ref = sb_pin(L);
  pin_value(L, 1, &s->self_ref);
  if (timeout >= 0) {
    ev_now_update(sb_loop());
    ev_timer_set(&s->ftimer, timeout, 0.);
    ev_timer_start(sb_loop(), &s->ftimer);
  }
  return lua_yield(L, 0);
}

static int
stream_close(lua_State *L)
{
  stream_release(luaL_checkudata(L, 1, STREAM_MT));
  return 0;
}

static int
stream_peercred(lua_State *L)
{
  Stream *s = check_stream(L);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(s->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return sb_push_errno(L, "peercred", errno);
  lua_pushinteger(L, cred.pid);
  lua_pushinteger(L, cred.uid);
  lua_pushinteger(L, cred.gid);
  return 3;
}

static int
stream_fd(lua_State *L)
{
  lua_pushinteger(L, check_stream(L)->fd);
  return 1;
}

static int
stream_closed(lua_State *L)
{
  Stream *s = luaL_checkudata(L, 1, STREAM_MT);
  lua_pushboolean(L, !s->open);
  return 1;
}

static int
stream_set_write_cap(lua_State *L)
{
  Stream *s = check_stream(L);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n > 0, 2, "the cap must be positive");
  s->wcap = (size_t)n;
  return 0;
}

static int
stream_tostring(lua_State *L)
{
  Stream *s = luaL_checkudata(L, 1, STREAM_MT);
  if (s->open)
    lua_pushfstring(L, STREAM_MT " (fd %d)", s->fd);
  else
    lua_pushliteral(L, STREAM_MT " (closed)");
  return 1;
}

static int
l_connect(lua_State *L)
{
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  struct sockaddr_un probe;
  if (strlen(path) != plen)
    return push_fail(L, "invalid socket path: it contains a NUL byte");
  if (plen == 0 || plen >= sizeof probe.sun_path)
    return push_fail(L, "invalid socket path");
  Stream *s = stream_new(L);
  s->caddr = calloc(1, sizeof *s->caddr);
  if (s->caddr == NULL)
    return push_fail(L, "out of memory");
  s->caddr->sun_family = AF_UNIX;
  memcpy(s->caddr->sun_path, path, plen);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free(s->caddr);
    s->caddr = NULL;
    return sb_push_errno(L, "socket", errno);
  }
  stream_attach(s, fd, 0);
  int err = try_connect(s);
  if (err == 0) {
    free(s->caddr);
    s->caddr = NULL;
    return 1;
  }
  if (err != EINPROGRESS && err != EAGAIN) {
    stream_release(s);
    return sb_push_errno(L, "connect", err);
  }
  if (!lua_isyieldable(L)) {
    stream_release(s);
    sb_check_yieldable(L, "loop.connect");
  }
  s->state = ST_CONNECTING;
  s->read_ref = sb_pin(L);
  pin_value(L, -1, &s->self_ref);
  s->cdeadline = ev_now(sb_loop()) + CONNECT_TIMEOUT;
  s->cdelay = 0.001;
  if (err == EINPROGRESS) {
    ev_io_start(sb_loop(), &s->wio);
  } else {
    ev_timer_set(&s->rtimer, s->cdelay, 0.);
    ev_timer_start(sb_loop(), &s->rtimer);
  }
  return lua_yield(L, 0);
}

static int
l_stream(lua_State *L)
{
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "invalid fd");
  Stream *s = stream_new(L);
  int flags = fcntl((int)fd, F_GETFL);
  if (flags < 0 || fcntl((int)fd, F_SETFL, flags | O_NONBLOCK) < 0)
    return sb_push_errno(L, "stream", errno);
  stream_attach(s, (int)fd, fd <= 2);
  if (fd <= 2)
    s->oflags = flags;
  return 1;
}

/* }====================================================== */

/*
** {======================================================
** Listener
** =======================================================
*/

typedef struct {
  NbListener ln;                /* ln.fd: -1 once closed */
  int fn_ref;
  int self_ref;
  char *path;
  dev_t dev;
  ino_t ino;
} Listener;

static void
listener_release(Listener *li)
{
  if (li->ln.fd < 0)
    return;
  nb_listener_close(&li->ln);
  if (li->path != NULL) {
    struct stat st;             /* unlink only the file we bound */
    if (lstat(li->path, &st) == 0 && S_ISSOCK(st.st_mode)
        && st.st_dev == li->dev && st.st_ino == li->ino)
      unlink(li->path);
    free(li->path);
    li->path = NULL;
  }
  sb_unref(&li->fn_ref);
  sb_unref(&li->self_ref);
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  (void)revents;
  Listener *li = w->data;
  lua_State *L = sb_main();
  sb_anchor(li->self_ref);
  for (int i = 0; i < NB_ACCEPT_BATCH && li->ln.fd >= 0; i++) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, li->fn_ref);
    Stream *s = stream_new(L);
    int fd = nb_accept(&li->ln, NULL, NULL);
    if (fd < 0) {
      lua_pop(L, 2);
      if (fd == NB_RETRY)
        continue;
      break;
    }
    stream_attach(s, fd, 0);
    sb_spawn(L, 1);
  }
  sb_unanchor();
}

static Listener *
check_listener(lua_State *L)
{
  Listener *li = luaL_checkudata(L, 1, LISTENER_MT);
  if (li->ln.fd < 0)
    luaL_error(L, "attempt to use a closed listener");
  return li;
}

static int
listener_close(lua_State *L)
{
  listener_release(luaL_checkudata(L, 1, LISTENER_MT));
  return 0;
}

static int
listener_fd(lua_State *L)
{
  lua_pushinteger(L, check_listener(L)->ln.fd);
  return 1;
}

static int
listener_path(lua_State *L)
{
  lua_pushstring(L, check_listener(L)->path);
  return 1;
}

static int
listener_closed(lua_State *L)
{
  lua_pushboolean(L, ((Listener *)luaL_checkudata(L, 1, LISTENER_MT))->ln.fd < 0);
  return 1;
}

/* Is a server answering on the socket file at addr? */
static int
socket_is_live(const struct sockaddr_un *addr)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  int r = connect(fd, (const struct sockaddr *)addr, sizeof *addr);
  int live = r == 0 || errno == EAGAIN || errno == EINPROGRESS;
  close(fd);
  return live;
}

static int
l_listen(lua_State *L)
{
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  lua_Integer mode = luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_Integer backlog = luaL_optinteger(L, 4, 511);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "invalid mode");
  luaL_argcheck(L, backlog > 0 && backlog <= 65535, 4, "invalid backlog");
  Listener *li = lua_newuserdatauv(L, sizeof *li, 0);
  memset(li, 0, sizeof *li);
  nb_listener_init(&li->ln, accept_cb, li, "listener");
  li->fn_ref = li->self_ref = LUA_NOREF;
  luaL_setmetatable(L, LISTENER_MT);

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  if (strlen(path) != plen)
    return push_fail(L, "invalid socket path: it contains a NUL byte");
  if (plen == 0 || plen >= sizeof addr.sun_path)
    return push_fail(L, "invalid socket path");
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path, plen);

  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return push_fail(L, "path exists and is not a socket");
    if (socket_is_live(&addr))
      return push_fail(L, "socket is in use by another server");
    if (unlink(path) != 0)
      return sb_push_errno(L, "unlink stale socket", errno);
  } else if (errno != ENOENT) {
    return sb_push_errno(L, "stat", errno);
  }

  char *pcopy = strdup(path);
  if (pcopy == NULL)
    return push_fail(L, "out of memory");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free(pcopy);
    return sb_push_errno(L, "socket", errno);
  }
  li->ln.fd = fd;
  /* Bind a temporary name with no permission at all, chmod it, listen,
  ** then rename it into place: the socket never has a wider mode than
  ** asked, and it appears at its path only once it has its mode and
  ** accepts. A path too long for the temporary name is bound in place. */
  struct sockaddr_un tmp = addr;
  int n = snprintf(tmp.sun_path, sizeof tmp.sun_path, "%s.%ld~", path, (long)getpid());
  int staged = n > 0 && (size_t)n < sizeof tmp.sun_path;
  if (!staged)
    tmp = addr;
  else
    unlink(tmp.sun_path);     /* a stale one of ours, from a reused pid */
  mode_t old = umask(0777);
  int r = bind(fd, (struct sockaddr *)&tmp, sizeof tmp);
  int err = errno;
  umask(old);
  if (r != 0) {
    free(pcopy);
    listener_release(li);
    return sb_push_errno(L, "bind", err);
  }
  const char *step = NULL;
  if (chmod(tmp.sun_path, (mode_t)mode) != 0)
    step = "chmod";
  else if (listen(fd, (int)backlog) != 0)
    step = "listen";
  else if (staged && rename(tmp.sun_path, path) != 0)
    step = "rename";
  if (step != NULL) {
    err = errno;
    unlink(tmp.sun_path);
    free(pcopy);
    listener_release(li);
    return sb_push_errno(L, step, err);
  }
  li->path = pcopy;
  if (lstat(path, &st) == 0) {
    li->dev = st.st_dev;
    li->ino = st.st_ino;
  }
  pin_value(L, 3, &li->fn_ref);
  pin_value(L, -1, &li->self_ref);
  nb_listener_start(&li->ln);
  return 1;
}

/* loop.listen_fd(fd, fn) -> listener | nil, err: accept on a listening
** socket this process was given (systemd socket activation). The socket
** is used as it is: never bound, chmod-ed or unlinked here; close() closes
** only this process's descriptor. */
static int
l_listen_fd(lua_State *L)
{
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "invalid fd");
  int accepting = 0;
  socklen_t len = sizeof accepting;
  if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0)
    return sb_push_errno(L, "listen_fd", errno);
  if (!accepting)
    return push_fail(L, "listen_fd: the descriptor is not a listening socket");
  int flags = fcntl((int)fd, F_GETFL);
  if (flags < 0 || fcntl((int)fd, F_SETFL, flags | O_NONBLOCK) < 0
      || fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
    return sb_push_errno(L, "listen_fd", errno);
  Listener *li = lua_newuserdatauv(L, sizeof *li, 0);
  memset(li, 0, sizeof *li);
  nb_listener_init(&li->ln, accept_cb, li, "listener");
  li->fn_ref = li->self_ref = LUA_NOREF;
  luaL_setmetatable(L, LISTENER_MT);
  li->ln.fd = (int)fd;
  li->path = NULL;              /* nothing to unlink: the socket is not ours */
  pin_value(L, 2, &li->fn_ref);
  pin_value(L, -1, &li->self_ref);
  nb_listener_start(&li->ln);
  return 1;
}

/* }====================================================== */

static const luaL_Reg loop_funcs[] = {
  { "run", l_run },
  { "stop", l_stop },
  { "now", l_now },
  { "time", l_time },
  { "spawn", l_spawn },
  { "set_error_handler", l_set_error_handler },
  { "sleep", l_sleep },
  { "wait", l_wait },
  { "wake", l_wake },
  { "timer", l_timer },
  { "signal", l_signal },
  { "listen", l_listen },
  { "listen_fd", l_listen_fd },
  { "connect", l_connect },
  { "stream", l_stream },
  { NULL, NULL }
};

static const luaL_Reg stream_meth[] = {
  { "read_line", stream_read_line },
  { "read_some", stream_read_some },
  { "write", stream_write },
  { "flush", stream_flush },
  { "close", stream_close },
  { "peercred", stream_peercred },
  { "fd", stream_fd },
  { "closed", stream_closed },
  { "set_write_cap", stream_set_write_cap },
  { NULL, NULL }
};

static const luaL_Reg listener_meth[] = {
  { "close", listener_close },
  { "fd", listener_fd },
  { "path", listener_path },
  { "closed", listener_closed },
  { NULL, NULL }
};

static const luaL_Reg timer_meth[] = {
  { "close", timer_close },
  { "stop", timer_close },
  { NULL, NULL }
};

static const luaL_Reg signal_meth[] = {
  { "close", signal_close },
  { NULL, NULL }
};

/* [-0, +0, m] The metatable name: methods as __index, close as __gc and
** __close. */
static void
createmeta(lua_State *L, const char *name, const luaL_Reg *meth,
           lua_CFunction close_fn)
{
  if (!luaL_newmetatable(L, name)) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L);
  luaL_setfuncs(L, meth, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, close_fn);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, close_fn);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
}

int
luaopen_core_loop(lua_State *L)
{
  createmeta(L, STREAM_MT, stream_meth, stream_close);
  luaL_getmetatable(L, STREAM_MT);
  lua_pushcfunction(L, stream_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  createmeta(L, LISTENER_MT, listener_meth, listener_close);
  createmeta(L, TIMER_MT, timer_meth, timer_close);
  createmeta(L, SIGNAL_MT, signal_meth, signal_close);
  if (luaL_newmetatable(L, SLEEP_MT)) {
    lua_pushcfunction(L, sleep_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);

  if (lua_getfield(L, LUA_REGISTRYINDEX, PARKED_KEY) != LUA_TTABLE) {
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, PARKED_KEY);
  }
  lua_pop(L, 1);

  if (lua_getfield(L, LUA_REGISTRYINDEX, STATE_KEY) == LUA_TNIL) {
    lua_newuserdatauv(L, 1, 0);
    lua_newtable(L);
    lua_pushcfunction(L, state_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
    ev_idle_init(&q_idle, q_idle_cb);
    ev_check_init(&q_check, q_check_cb);
    q_ready = 1;
  }
  lua_pop(L, 1);

  luaL_newlib(L, loop_funcs);
  return 1;
}
