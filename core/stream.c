/*
** stream.c -- core.loop's Stream: a nonblocking fd (a Unix socket from
** loop.connect or a listener, or a descriptor given to loop.stream) with
** buffered line and chunk reads, buffered writes and flush. A read, a
** flush or a connect that must wait pins the coroutine and yields; the
** watchers resume it through sb_resume_ref (protected: a memory error
** making the result is reported, never raised through ev_run).
**
** Lifetime rules (liolib / luv): every userdata is created closed before
** its resource is acquired; close is idempotent and is also __gc and
** __close; an object with an active watcher is pinned in the registry
** (self_ref) and every callback anchors it on the main stack while it runs.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "core.h"
#include "netbuf.h"

#define STREAM_MT "core.loop.Stream"

#define WRITE_CAP       (16 * 1024 * 1024)
#define CONNECT_TIMEOUT 10.0

enum { ST_OPEN, ST_CONNECTING };
enum { RD_LINE, RD_SOME };

typedef SbStream Stream;

struct SbStream {
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
};

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

Stream *
sb_stream_new(lua_State *L)
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

void
sb_stream_attach(Stream *s, int fd, int noclose)
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
    sb_defer_resume(s->read_ref, LUA_NOREF, 0, "closed");
    s->read_ref = LUA_NOREF;
  }
  if (s->flush_ref != LUA_NOREF) {
    sb_defer_resume(s->flush_ref, LUA_NOREF, 0, "closed");
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
  return sb_pushfail(co, r->err);
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
      sb_resume_ref(ref, sb_push_true, NULL);
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
  sb_pin_value(L, 1, &s->self_ref);
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
    return sb_pushfail(L, r == NB_FULL ? "write buffer full" : "out of memory");
  }
  if (r > 0) {
    sb_pin_value(L, 1, &s->self_ref);
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
  sb_pin_value(L, 1, &s->self_ref);
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

int
sb_loop_connect(lua_State *L)
{
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  struct sockaddr_un probe;
  if (strlen(path) != plen)
    return sb_pushfail(L, "invalid socket path: it contains a NUL byte");
  if (plen == 0 || plen >= sizeof probe.sun_path)
    return sb_pushfail(L, "invalid socket path");
  Stream *s = sb_stream_new(L);
  s->caddr = calloc(1, sizeof *s->caddr);
  if (s->caddr == NULL)
    return sb_pushfail(L, "out of memory");
  s->caddr->sun_family = AF_UNIX;
  memcpy(s->caddr->sun_path, path, plen);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free(s->caddr);
    s->caddr = NULL;
    return sb_push_errno(L, "socket", errno);
  }
  sb_stream_attach(s, fd, 0);
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
  sb_pin_value(L, -1, &s->self_ref);
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

int
sb_loop_stream(lua_State *L)
{
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "invalid fd");
  Stream *s = sb_stream_new(L);
  int flags = fcntl((int)fd, F_GETFL);
  if (flags < 0 || fcntl((int)fd, F_SETFL, flags | O_NONBLOCK) < 0)
    return sb_push_errno(L, "stream", errno);
  sb_stream_attach(s, (int)fd, fd <= 2);
  if (fd <= 2)
    s->oflags = flags;
  return 1;
}

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

void
sb_stream_open(lua_State *L)
{
  static const luaL_Reg meta[] = {
    { "__gc", stream_close },
    { "__close", stream_close },
    { "__tostring", stream_tostring },
    { NULL, NULL }
  };
  sb_createmeta(L, STREAM_MT, meta, stream_meth);
}
