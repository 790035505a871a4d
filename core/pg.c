/*
** pg.c -- core.pg: PostgreSQL connections on libpq's asynchronous API,
** driven by libev (the type core.pg.Conn; the module functions connect
** and bytea are here too, as is the small guard type of a waiting call).
**
** Nothing here blocks the loop. pg.connect starts the connection with
** PQconnectStartParams and drives PQconnectPoll from an ev_io on the
** connection's socket (the socket may change between polls: the watcher
** is set again each time), with an ev_timer as the connect timeout. A
** command is sent with PQsendPrepare / PQsendQueryPrepared (statements
** prepared once per connection and cached by their SQL text in the
** Conn's uservalue, sql -> statement name), PQsendQueryParams past the
** cache's bound, or PQsendQuery for exec (several statements, no
** parameters); the connection is nonblocking, so what PQflush cannot
** write yet waits for EV_WRITE. The calling coroutine yields (with a
** continuation, lua_yieldk: a first use prepares, then executes, in one
** call) and the watcher resumes it once PQgetResult says the command is
** done; the continuation turns the result into Lua values on the
** coroutine itself.
**
** Each waiting call keeps a guard (core.pg.Wait) in a to-be-closed slot
** of its frame: when the coroutine is closed while it waits (or
** collected at lua_close), the guard's close runs. A query or connect
** cannot be abandoned halfway on a live connection (its result would
** arrive for the next command), so that closes the connection; an
** abandoned wait_notify just stops waiting.
**
** The connection's socket is watched whenever it is open, so that
** notifications (LISTEN/NOTIFY) and the server closing an idle
** connection are seen at once; while nobody waits on the connection the
** watcher does not keep the loop running (ev_unref).
**
** One close path: close, __gc and __close all run conn_release, which
** stops the watchers, resumes any coroutine still waiting with
** nil, "connection closed", and PQfinish'es the connection.
**
** The password comes from a file (opts.password_file; it must not be
** readable by group or others), read into locked memory and wiped once
** libpq has copied it; a connection string that carries a password is
** refused, so the password is never in argv or a configuration file.
*/
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "core.h"
#include "netbuf.h"

#define CONN_MT   "core.pg.Conn"
#define WAIT_MT   "core.pg.Wait"
#define BYTEA_MT  "core.pg.Bytea"
#define BLOB_MT   "core.store.Blob"     /* core.store's BLOB: bound as bytea */

/* Past this many prepared statements on one connection, new SQL texts
** run unprepared (PQsendQueryParams): a bound on the server's memory if
** a caller builds SQL text dynamically. */
#define STMT_CACHE_MAX 256
#define MAX_PARAMS 65535
#define PASSWORD_MAX 1024
#define DEFAULT_CONNECT_TIMEOUT 10.0
#define ERR_MAX 512

/* type OIDs (catalog/pg_type_d.h, a server header) */
#define BOOLOID    16
#define BYTEAOID   17
#define INT8OID    20
#define INT2OID    21
#define INT4OID    23
#define OIDOID     26
#define FLOAT4OID  700
#define FLOAT8OID  701
#define NUMERICOID 1700

enum { ST_CLOSED, ST_CONNECTING, ST_IDLE, ST_BUSY, ST_LOST };

/* What a command's continuation does with the result. */
enum { MODE_QUERY, MODE_EXEC };
/* Where a command is. */
enum { STEP_PREPARE, STEP_EXEC };

typedef struct Wait Wait;

typedef struct Conn {
  PGconn *pg;
  int state;
  ev_io io;
  int io_active;            /* the watcher is started */
  int io_busy;              /* ... and counted by the loop (ev_ref) */
  int want_write;           /* PQflush has more to write */
  ev_timer timer;           /* the connect timeout */
  ev_timer ntimer;          /* wait_notify's timeout */
  int co_ref;               /* coroutine waiting for connect or a command */
  int nco_ref;              /* coroutine in wait_notify */
  int cb_ref;               /* on_notify's function */
  int self_ref;             /* pinned while a coroutine waits or cb_ref */
  int timed_out;            /* the last connect / wait_notify timed out */
  PGresult *res;            /* the result of the command (first error or
                               last result) */
  PGnotify *notify;         /* the notification for the wait_notify waiter */
  Wait *guard;              /* the call waiting on connect or a command */
  Wait *nguard;             /* the call in wait_notify */
  unsigned long nstmt;      /* statement names: sb1, sb2, ... */
  int cached;               /* statements in the cache */
  char err[ERR_MAX];        /* why the connection failed or was lost */
  char fatal[256];          /* a FATAL error the server sent between
                               commands (a shutdown), for conn_lost */
} Conn;

struct Wait {
  Conn *c;                  /* the Conn is the Wait's uservalue */
  int active;
  int notify;               /* a wait_notify (else connect or a command) */
};

/*
** {======================================================
** Watchers and the close path (no Lua errors here)
** =======================================================
*/

/* libpq's error text on one line: trailing newlines cut, inner ones
** turned into "; " (a connection failure lists each address tried). */
static void
set_err(Conn *c, const char *prefix, const char *msg)
{
  char tmp[ERR_MAX];
  size_t n = 0;
  if (msg == NULL || *msg == '\0')
    msg = "unknown error";
  for (const char *p = msg; *p != '\0' && n + 3 < sizeof tmp; p++) {
    if (*p == '\n') {
      while (p[1] == ' ' || p[1] == '\t' || p[1] == '\n')
        p++;
      if (p[1] == '\0')
        break;
      tmp[n++] = ';';
      tmp[n++] = ' ';
    } else if (*p != '\r' && *p != '\t') {
      tmp[n++] = *p;
    } else {
      tmp[n++] = ' ';
    }
  }
  tmp[n] = '\0';
  snprintf(c->err, sizeof c->err, "%s%s", prefix != NULL ? prefix : "", tmp);
}

/* Watch the socket for events (0: not at all). A watcher nobody waits on
** does not keep the loop running. */
static void
watch(Conn *c, int events)
{
  struct ev_loop *loop = sb_loop();
  if (c->io_active) {
    if (!c->io_busy)
      ev_ref(loop);
    ev_io_stop(loop, &c->io);
    c->io_active = 0;
  }
  if (events == 0 || c->pg == NULL)
    return;
  int fd = PQsocket(c->pg);
  if (fd < 0)
    return;
  ev_io_set(&c->io, fd, events);
  ev_io_start(loop, &c->io);
  c->io_busy = c->co_ref != LUA_NOREF || c->nco_ref != LUA_NOREF;
  if (!c->io_busy)
    ev_unref(loop);
  c->io_active = 1;
}

/* The watcher an open connection has when not connecting. */
static void
rewatch(Conn *c)
{
  if (c->state == ST_IDLE || c->state == ST_BUSY)
    watch(c, EV_READ | (c->want_write ? EV_WRITE : 0));
  else
    watch(c, 0);
}

/* Unpin the Conn once nothing needs it pinned. */
static void
maybe_unpin(Conn *c)
{
  if (c->co_ref == LUA_NOREF && c->nco_ref == LUA_NOREF
      && c->cb_ref == LUA_NOREF)
    sb_unref(&c->self_ref);
}

static void
drop_result(Conn *c)
{
  if (c->res != NULL) {
    PQclear(c->res);
    c->res = NULL;
  }
}

/* Resume the waiter pinned in *ref (if any) after the next poll, with
** nil, why: its continuation reads the Conn's state. */
static void
defer_waiter(int *ref, const char *why)
{
  int r = *ref;
  *ref = LUA_NOREF;
  if (r != LUA_NOREF)
    sb_defer_resume(r, LUA_NOREF, 0, why);
}

/* The one close path: close, __gc, __close, and a guard's close. */
static void
conn_release(Conn *c)
{
  if (c->state == ST_CLOSED)
    return;
  c->state = ST_CLOSED;
  watch(c, 0);
  ev_timer_stop(sb_loop(), &c->timer);
  ev_timer_stop(sb_loop(), &c->ntimer);
  drop_result(c);
  if (c->notify != NULL) {
    PQfreemem(c->notify);
    c->notify = NULL;
  }
  if (c->pg != NULL) {
    PQfinish(c->pg);
    c->pg = NULL;
  }
  defer_waiter(&c->co_ref, "connection closed");
  defer_waiter(&c->nco_ref, "connection closed");
  sb_unref(&c->cb_ref);
  sb_unref(&c->self_ref);
}

/* The connection is gone (the server closed it, a read or write failed):
** every waiter is told, the Conn answers with the reason from now on. */
static void
conn_lost(Conn *c, const char *why)
{
  if (c->fatal[0] != '\0')
    snprintf(c->err, sizeof c->err, "connection lost: %s", c->fatal);
  else
    set_err(c, "connection lost: ", why);
  c->state = ST_LOST;
  c->want_write = 0;
  watch(c, 0);
  ev_timer_stop(sb_loop(), &c->ntimer);
  int ref = c->co_ref;
  c->co_ref = LUA_NOREF;
  sb_resume_ref(ref, NULL, NULL);
  if (c->state != ST_CLOSED) {
    ref = c->nco_ref;
    c->nco_ref = LUA_NOREF;
    sb_resume_ref(ref, NULL, NULL);
  }
}

/* }====================================================== */

/*
** {======================================================
** Callbacks
** =======================================================
*/

typedef struct {
  Conn *c;
  PGnotify *n;
} NotifyCall;

/* Protected: run the on_notify function in a new coroutine. */
static int
notify_p(lua_State *L)
{
  NotifyCall *nc = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, nc->c->cb_ref);
  lua_pushstring(L, nc->n->relname);
  lua_pushstring(L, nc->n->extra != NULL ? nc->n->extra : "");
  lua_pushinteger(L, nc->n->be_pid);
  sb_spawn(L, 3);
  return 0;
}

/* Hand the notifications libpq has read to the callback, or the first
** one to the coroutine in wait_notify. */
static void
deliver_notifies(Conn *c)
{
  while (c->state == ST_IDLE || c->state == ST_BUSY) {
    int to_cb = c->cb_ref != LUA_NOREF;
    if (!to_cb && (c->nco_ref == LUA_NOREF || c->notify != NULL))
      return;
    PGnotify *n = PQnotifies(c->pg);
    if (n == NULL)
      return;
    if (to_cb) {
      NotifyCall nc = { c, n };
      sb_protect(notify_p, &nc, "core.pg: on_notify");
      PQfreemem(n);
    } else {
      c->notify = n;
      ev_timer_stop(sb_loop(), &c->ntimer);
      int ref = c->nco_ref;
      c->nco_ref = LUA_NOREF;
      rewatch(c);
      sb_resume_ref(ref, NULL, NULL);
    }
  }
}

/* Read what the server sent; collect the results of the command in
** flight. Returns 1 when the command is done. */
static int
collect(Conn *c)
{
  while (!PQisBusy(c->pg)) {
    PGresult *r = PQgetResult(c->pg);
    if (r == NULL)
      return 1;
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
      PQclear(r);
      conn_lost(c, "COPY is not supported");
      return 0;
    }
    if (c->res == NULL) {
      c->res = r;
    } else if (PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
      PQclear(r);                       /* keep the first error */
    } else {
      PQclear(c->res);
      c->res = r;
    }
  }
  return 0;
}

static void
connect_poll(Conn *c)
{
  switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
      watch(c, EV_READ);
      return;
    case PGRES_POLLING_WRITING:
      watch(c, EV_WRITE);
      return;
    case PGRES_POLLING_OK:
      ev_timer_stop(sb_loop(), &c->timer);
      if (PQsetnonblocking(c->pg, 1) != 0) {
        set_err(c, NULL, PQerrorMessage(c->pg));
        c->state = ST_LOST;
        watch(c, 0);
        break;
      }
      c->state = ST_IDLE;
      break;
    default:
      ev_timer_stop(sb_loop(), &c->timer);
      set_err(c, NULL, PQerrorMessage(c->pg));
      c->state = ST_LOST;
      watch(c, 0);
      break;
  }
  int ref = c->co_ref;
  c->co_ref = LUA_NOREF;
  rewatch(c);
  sb_resume_ref(ref, NULL, NULL);
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  Conn *c = w->data;
  sb_anchor(c->self_ref);       /* a resume may unpin the Conn */
  if (c->state == ST_CONNECTING) {
    connect_poll(c);
    goto out;
  }
  if (c->state != ST_IDLE && c->state != ST_BUSY)
    goto out;
  if ((revents & EV_READ) && !PQconsumeInput(c->pg)) {
    /* the server's last word (an ErrorResponse before it closed: a
    ** shutdown, a terminated backend) is the command's result */
    if (c->state == ST_BUSY)
      collect(c);
    if (c->state != ST_LOST && c->state != ST_CLOSED)
      conn_lost(c, PQerrorMessage(c->pg));
    goto out;
  }
  if (c->want_write || (revents & EV_WRITE)) {
    int f = PQflush(c->pg);
    if (f < 0) {
      conn_lost(c, PQerrorMessage(c->pg));
      goto out;
    }
    c->want_write = f == 1;
  }
  if (c->state == ST_BUSY && collect(c)) {
    c->state = ST_IDLE;
    c->want_write = 0;
    int ref = c->co_ref;
    c->co_ref = LUA_NOREF;
    rewatch(c);
    sb_resume_ref(ref, NULL, NULL);
  }
  if (c->state == ST_IDLE || c->state == ST_BUSY)
    deliver_notifies(c);
  if ((c->state == ST_IDLE || c->state == ST_BUSY)
      && PQstatus(c->pg) == CONNECTION_BAD)
    conn_lost(c, PQerrorMessage(c->pg));
  else
    rewatch(c);
out:
  if (c->state == ST_CLOSED || c->state == ST_LOST)
    watch(c, 0);
  maybe_unpin(c);
  sb_unanchor();
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Conn *c = w->data;
  sb_anchor(c->self_ref);
  if (c->state == ST_CONNECTING) {
    snprintf(c->err, sizeof c->err, "connection timed out");
    c->timed_out = 1;
    c->state = ST_LOST;
    watch(c, 0);
    int ref = c->co_ref;
    c->co_ref = LUA_NOREF;
    sb_resume_ref(ref, NULL, NULL);
  }
  maybe_unpin(c);
  sb_unanchor();
}

static void
ntimer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  Conn *c = w->data;
  sb_anchor(c->self_ref);
  if (c->nco_ref != LUA_NOREF) {
    c->timed_out = 1;
    int ref = c->nco_ref;
    c->nco_ref = LUA_NOREF;
    rewatch(c);
    sb_resume_ref(ref, NULL, NULL);
  }
  maybe_unpin(c);
  sb_unanchor();
}

/* libpq's notices (NOTICE, WARNING, and an error that came while no
** command was in flight) are not printed; a FATAL one is kept: it says why
** the server is about to close the connection. */
static void
on_notice(void *arg, const PGresult *r)
{
  Conn *c = arg;
  const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (sev == NULL || (strcmp(sev, "FATAL") != 0 && strcmp(sev, "PANIC") != 0))
    return;
  const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
  const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  snprintf(c->fatal, sizeof c->fatal, "%s (SQLSTATE %s)", msg != NULL ? msg : "server error",
           code != NULL ? code : "?");
}

/* }====================================================== */

/*
** {======================================================
** The guard of a waiting call
** =======================================================
*/

/* [-0, +1, m] A guard for the call waiting on c (the Conn at conn_idx),
** in a to-be-closed slot. */
static Wait *
push_guard(lua_State *L, int conn_idx, Conn *c, int notify)
{
  Wait *g = lua_newuserdatauv(L, sizeof *g, 1);
  g->c = c;
  g->active = 0;
  g->notify = notify;
  lua_pushvalue(L, conn_idx);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, WAIT_MT);
  lua_toclose(L, -1);
  return g;
}

/* A guard closes while its call still waits: the coroutine was closed
** (or, at lua_close, collected). */
static int
wait_close(lua_State *L)
{
  Wait *g = luaL_checkudata(L, 1, WAIT_MT);
  if (!g->active)
    return 0;
  g->active = 0;
  Conn *c = g->c;
  if (g->notify) {
    if (c->nguard == g) {
      c->nguard = NULL;
      sb_unref(&c->nco_ref);
      ev_timer_stop(sb_loop(), &c->ntimer);
      rewatch(c);
      maybe_unpin(c);
    }
  } else if (c->guard == g) {
    /* a command's result would come to the next one: the connection
    ** cannot be used again */
    c->guard = NULL;
    sb_unref(&c->co_ref);
    conn_release(c);
  }
  return 0;
}

/* }====================================================== */

/*
** {======================================================
** Results
** =======================================================
*/

/* [-0, +1, m] One column value by its type. */
static void
push_value(lua_State *L, const PGresult *r, int row, int col)
{
  const char *v = PQgetvalue(r, row, col);
  size_t len = (size_t)PQgetlength(r, row, col);
  switch (PQftype(r, col)) {
    case BOOLOID:
      lua_pushboolean(L, v[0] == 't');
      return;
    case INT2OID:
    case INT4OID:
    case INT8OID:
    case OIDOID:
    case NUMERICOID:
      if (lua_stringtonumber(L, v) == 0)
        lua_pushlstring(L, v, len);     /* NaN, a numeric past int64 */
      return;
    case FLOAT4OID:
    case FLOAT8OID:
      lua_pushnumber(L, (lua_Number)strtod(v, NULL));
      return;
    case BYTEAOID: {
      size_t n = 0;
      unsigned char *b = PQunescapeBytea((const unsigned char *)v, &n);
      if (b == NULL)
        luaL_error(L, "not enough memory");
      lua_pushlstring(L, (const char *)b, n);
      PQfreemem(b);
      return;
    }
    default:
      lua_pushlstring(L, v, len);
      return;
  }
}

/* [-0, +1, m] The rows: an array of tables keyed by column name (a NULL
** column is absent). */
static void
push_rows(lua_State *L, const PGresult *r)
{
  int nt = PQntuples(r), nf = PQnfields(r);
  luaL_checkstack(L, 4, NULL);
  lua_createtable(L, nt, 0);
  for (int i = 0; i < nt; i++) {
    lua_createtable(L, 0, nf);
    for (int j = 0; j < nf; j++) {
      if (PQgetisnull(r, i, j))
        continue;
      push_value(L, r, i, j);
      lua_setfield(L, -2, PQfname(r, j));
    }
    lua_rawseti(L, -2, i + 1);
  }
}

/* [-0, +3, m] nil, "message (SQLSTATE xxxxx)", "xxxxx". */
static int
push_result_error(lua_State *L, Conn *c, const PGresult *r)
{
  const char *code = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  const char *msg = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
                              : NULL;
  if (msg == NULL) {
    set_err(c, NULL, r != NULL ? PQresultErrorMessage(r) : PQerrorMessage(c->pg));
    msg = c->err;
  }
  luaL_pushfail(L);
  if (code != NULL) {
    lua_pushfstring(L, "%s (SQLSTATE %s)", msg, code);
    lua_pushstring(L, code);
  } else {
    lua_pushstring(L, msg);
    lua_pushnil(L);
  }
  return 3;
}

static int
result_ok(const PGresult *r)
{
  if (r == NULL)
    return 1;                           /* an empty query */
  ExecStatusType st = PQresultStatus(r);
  return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK
         || st == PGRES_EMPTY_QUERY;
}

/* }====================================================== */

/*
** {======================================================
** Commands
** =======================================================
*/

static Conn *
check_conn(lua_State *L)
{
  Conn *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->state == ST_CLOSED)
    luaL_error(L, "attempt to use a closed " CONN_MT);
  return c;
}

/* A Conn a command may start on: raises on misuse; returns 0, or 1 with
** nil, err pushed when the connection was lost. */
static int
check_ready(lua_State *L, Conn *c, const char *what)
{
  if (c->state == ST_LOST) {
    sb_pushfail(L, c->err);
    return 1;
  }
  if (c->state != ST_IDLE)
    luaL_error(L, "%s: the connection is busy (one command at a time)", what);
  sb_check_yieldable(L, what);
  return 0;
}

/* [-0, +0, m] Check the parameters at first..last (misuse raises before
** anything is sent). */
static void
check_params(lua_State *L, int first, int last)
{
  if (last - first + 1 > MAX_PARAMS)
    luaL_error(L, "too many parameters (at most %d)", MAX_PARAMS);
  for (int i = first; i <= last; i++) {
    int n = i - first + 1;
    switch (lua_type(L, i)) {
      case LUA_TNIL:
      case LUA_TBOOLEAN:
      case LUA_TNUMBER:
        break;
      case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, i, &len);
        if (strlen(s) != len)
          luaL_error(L, "parameter %d: a string with a zero byte (bind binary data "
                     "with pg.bytea)", n);
        break;
      }
      case LUA_TUSERDATA:
        if (luaL_testudata(L, i, BYTEA_MT) || luaL_testudata(L, i, BLOB_MT))
          break;
        /* fall through */
      default:
        luaL_error(L, "parameter %d: cannot bind a %s", n, luaL_typename(L, i));
    }
  }
}

/* Send the command: the statement name (NULL: unnamed, with the SQL) and
** the parameters at first..last, bound in text (bytea in binary). The
** strings made for numbers are pushed and popped again. 0, or -1 with
** c->err set. */
static int
send_params(lua_State *L, Conn *c, const char *name, const char *sql,
            int first, int last)
{
  int n = last - first + 1;
  if (n < 0)
    n = 0;
  int top = lua_gettop(L);
  luaL_checkstack(L, n + 4, "too many parameters");
  const char **values = NULL;
  int *lengths = NULL, *formats = NULL;
  if (n > 0) {
    size_t need = (size_t)n * (sizeof *values + 2 * sizeof *lengths);
    values = lua_newuserdatauv(L, need, 0);
    lengths = (int *)(values + n);
    formats = lengths + n;
  }
  for (int i = 0; i < n; i++) {
    int idx = first + i;
    lengths[i] = 0;
    formats[i] = 0;
    switch (lua_type(L, idx)) {
      case LUA_TNIL:
        values[i] = NULL;
        break;
      case LUA_TBOOLEAN:
        values[i] = lua_toboolean(L, idx) ? "true" : "false";
        break;
      case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
          values[i] = lua_pushfstring(L, "%I", lua_tointeger(L, idx));
        } else {
          double d = (double)lua_tonumber(L, idx);
          char buf[64];
          if (isnan(d))
            snprintf(buf, sizeof buf, "NaN");
          else if (isinf(d))
            snprintf(buf, sizeof buf, "%sInfinity", d < 0 ? "-" : "");
          else
            snprintf(buf, sizeof buf, "%.17g", d);
          values[i] = lua_pushstring(L, buf);
        }
        break;
      case LUA_TSTRING:
        values[i] = lua_tostring(L, idx);
        break;
      default: {                        /* Bytea or core.store.Blob */
        size_t len;
        lua_getiuservalue(L, idx, 1);
        values[i] = lua_tolstring(L, -1, &len);
        if (values[i] == NULL)
          values[i] = "";
        if (len > (size_t)0x7fffffff)
          luaL_error(L, "parameter %d: too long", i + 1);
        lengths[i] = (int)len;
        formats[i] = 1;
        break;
      }
    }
  }
  int ok = name != NULL
    ? PQsendQueryPrepared(c->pg, name, n, values, lengths, formats, 0)
    : PQsendQueryParams(c->pg, sql, n, NULL, values, lengths, formats, 0);
  lua_settop(L, top);
  if (!ok) {
    set_err(c, NULL, PQerrorMessage(c->pg));
    return -1;
  }
  return 0;
}

/* After a send: flush, mark busy, pin the caller. 0, or -1 with c->err. */
static int
started(lua_State *L, Conn *c, Wait *g)
{
  int f = PQflush(c->pg);
  if (f < 0) {
    set_err(c, NULL, PQerrorMessage(c->pg));
    return -1;
  }
  c->want_write = f == 1;
  c->state = ST_BUSY;
  drop_result(c);
  sb_pin_value(L, 1, &c->self_ref);
  c->co_ref = sb_pin(L);
  g->active = 1;
  c->guard = g;
  rewatch(c);
  return 0;
}

/* A send failed before anything was in flight: the connection is most
** likely gone. */
static int
send_failed(lua_State *L, Conn *c)
{
  char why[ERR_MAX];
  snprintf(why, sizeof why, "%s", c->err);
  if (PQstatus(c->pg) == CONNECTION_BAD) {
    conn_lost(c, why);
    return sb_pushfail(L, c->err);
  }
  return sb_pushfail(L, why);
}

/* ctx of the continuation: the guard's index, the step, the mode, and
** whether the statement was prepared afresh after a stale plan. */
#define CTX(idx, step, mode, retried) \
  ((lua_KContext)(((idx) << 4) | ((retried) << 3) | ((mode) << 1) | (step)))
#define CTX_IDX(k)     ((int)((k) >> 4))
#define CTX_RETRIED(k) ((int)(((k) >> 3) & 1))
#define CTX_MODE(k)    ((int)(((k) >> 1) & 3))
#define CTX_STEP(k)    ((int)((k) & 1))

static int command_k(lua_State *L, int status, lua_KContext ctx);

/* Prepare sql under a new name (pushed above the guard) and yield. */
static int
prepare_and_yield(lua_State *L, Conn *c, Wait *g, int gidx, const char *sql,
                  int nparams, int mode, int retried)
{
  lua_settop(L, gidx);
  char name[32];
  snprintf(name, sizeof name, "sb%lu", ++c->nstmt);
  lua_pushstring(L, name);                          /* gidx + 1 */
  if (!PQsendPrepare(c->pg, name, sql, nparams, NULL)) {
    set_err(c, NULL, PQerrorMessage(c->pg));
    return send_failed(L, c);
  }
  if (started(L, c, g) != 0)
    return send_failed(L, c);
  return lua_yieldk(L, 0, CTX(gidx, STEP_PREPARE, mode, retried), command_k);
}

/* The command is done (or the connection gone): the continuation of
** every command. Stack: self, sql, params..., guard[, name]. */
static int
command_k(lua_State *L, int status, lua_KContext ctx)
{
  (void)status;
  int gidx = CTX_IDX(ctx), step = CTX_STEP(ctx), mode = CTX_MODE(ctx);
  Wait *g = lua_touserdata(L, gidx);
  Conn *c = g->c;
  g->active = 0;
  if (c->guard == g)
    c->guard = NULL;
  lua_settop(L, gidx + (step == STEP_PREPARE ? 1 : 0));
  if (c->state == ST_CLOSED)
    return sb_pushfail(L, "connection closed");
  if (c->state == ST_LOST) {
    if (c->res != NULL && PQresultStatus(c->res) == PGRES_FATAL_ERROR
        && PQresultErrorField(c->res, PG_DIAG_SQLSTATE) != NULL)
      return push_result_error(L, c, c->res);
    return sb_pushfail(L, c->err);
  }
  const char *sql = lua_tostring(L, 2);
  int first = 3, last = gidx - 1;
  if (step == STEP_PREPARE) {
    if (!result_ok(c->res))
      return push_result_error(L, c, c->res);
    drop_result(c);
    const char *name = lua_tostring(L, gidx + 1);
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, gidx + 1);
    lua_rawset(L, -3);                  /* cache[sql] = name */
    lua_pop(L, 1);
    c->cached++;
    if (send_params(L, c, name, NULL, first, last) != 0)
      return send_failed(L, c);
    if (started(L, c, g) != 0)
      return send_failed(L, c);
    return lua_yieldk(L, 0, CTX(gidx, STEP_EXEC, mode, CTX_RETRIED(ctx)),
                      command_k);
  }
  if (!result_ok(c->res)) {
    const char *code = PQresultErrorField(c->res, PG_DIAG_SQLSTATE);
    /* a cached plan whose result type changed (a migration altered the
    ** table): outside a transaction, prepare it again, once */
    if (mode == MODE_QUERY && !CTX_RETRIED(ctx) && code != NULL
        && strcmp(code, "0A000") == 0
        && PQtransactionStatus(c->pg) == PQTRANS_IDLE) {
      lua_getiuservalue(L, 1, 1);
      lua_pushvalue(L, 2);
      if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, 2);
        lua_pushnil(L);
        lua_rawset(L, -3);
        lua_pop(L, 1);
        c->cached--;
        drop_result(c);
        return prepare_and_yield(L, c, g, gidx, sql, last - first + 1, mode, 1);
      }
      lua_pop(L, 2);
    }
    return push_result_error(L, c, c->res);
  }
  if (mode == MODE_EXEC) {
    drop_result(c);
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_Integer count = 0;
  if (c->res != NULL) {
    push_rows(L, c->res);
    const char *t = PQcmdTuples(c->res);
    count = *t != '\0' ? (lua_Integer)strtoll(t, NULL, 10)
                       : (lua_Integer)PQntuples(c->res);
  } else {
    lua_newtable(L);
  }
  drop_result(c);
  lua_pushinteger(L, count);
  return 2;
}

/* conn:query(sql, ...) -> rows, count | nil, err, sqlstate */
static int
conn_query(lua_State *L)
{
  Conn *c = check_conn(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  if (strlen(sql) != len)
    luaL_error(L, "SQL text contains a zero byte");
  int last = lua_gettop(L);
  check_params(L, 3, last);
  if (check_ready(L, c, "conn:query"))
    return 2;
  Wait *g = push_guard(L, 1, c, 0);
  int gidx = lua_gettop(L);
  int nparams = last - 2;
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  const char *name = lua_tostring(L, -1);
  if (name != NULL) {
    int rc = send_params(L, c, name, NULL, 3, last);
    lua_settop(L, gidx);
    if (rc != 0 || started(L, c, g) != 0)
      return send_failed(L, c);
    return lua_yieldk(L, 0, CTX(gidx, STEP_EXEC, MODE_QUERY, 0), command_k);
  }
  lua_settop(L, gidx);
  if (c->cached < STMT_CACHE_MAX)
    return prepare_and_yield(L, c, g, gidx, sql, nparams, MODE_QUERY, 0);
  if (send_params(L, c, NULL, sql, 3, last) != 0 || started(L, c, g) != 0)
    return send_failed(L, c);
  return lua_yieldk(L, 0, CTX(gidx, STEP_EXEC, MODE_QUERY, 0), command_k);
}

/* Send sql as a simple query (several statements, no parameters). */
static int
simple_command(lua_State *L, Conn *c, const char *sql)
{
  Wait *g = push_guard(L, 1, c, 0);
  int gidx = lua_gettop(L);
  if (!PQsendQuery(c->pg, sql)) {
    set_err(c, NULL, PQerrorMessage(c->pg));
    return send_failed(L, c);
  }
  if (started(L, c, g) != 0)
    return send_failed(L, c);
  return lua_yieldk(L, 0, CTX(gidx, STEP_EXEC, MODE_EXEC, 0), command_k);
}

/* conn:exec(sql) -> true | nil, err, sqlstate */
static int
conn_exec(lua_State *L)
{
  Conn *c = check_conn(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  if (strlen(sql) != len)
    luaL_error(L, "SQL text contains a zero byte");
  lua_settop(L, 2);
  if (check_ready(L, c, "conn:exec"))
    return 2;
  return simple_command(L, c, sql);
}

/* conn:listen(channel) / conn:unlisten(channel): the channel quoted as
** an identifier. */
static int
listen_cmd(lua_State *L, const char *verb)
{
  Conn *c = check_conn(L);
  size_t len;
  const char *ch = luaL_checklstring(L, 2, &len);
  if (len == 0 || strlen(ch) != len || len > 63)
    luaL_error(L, "channel: expected a name of 1 to 63 bytes");
  lua_settop(L, 2);
  if (check_ready(L, c, verb))
    return 2;
  char *id = PQescapeIdentifier(c->pg, ch, len);
  if (id == NULL) {
    set_err(c, NULL, PQerrorMessage(c->pg));
    return sb_pushfail(L, c->err);
  }
  lua_pushfstring(L, "%s %s", verb, id);
  PQfreemem(id);
  lua_replace(L, 2);
  return simple_command(L, c, lua_tostring(L, 2));
}

static int
conn_listen(lua_State *L)
{
  return listen_cmd(L, "LISTEN");
}

static int
conn_unlisten(lua_State *L)
{
  return listen_cmd(L, "UNLISTEN");
}

/* }====================================================== */

/*
** {======================================================
** Notifications
** =======================================================
*/

static int
push_notify(lua_State *L, PGnotify *n)
{
  lua_pushstring(L, n->relname);
  lua_pushstring(L, n->extra != NULL ? n->extra : "");
  lua_pushinteger(L, n->be_pid);
  PQfreemem(n);
  return 3;
}

static int
notify_k(lua_State *L, int status, lua_KContext ctx)
{
  (void)status;
  int gidx = (int)ctx;
  Wait *g = lua_touserdata(L, gidx);
  Conn *c = g->c;
  g->active = 0;
  if (c->nguard == g)
    c->nguard = NULL;
  lua_settop(L, gidx);
  if (c->notify != NULL) {
    PGnotify *n = c->notify;
    c->notify = NULL;
    return push_notify(L, n);
  }
  if (c->state == ST_CLOSED)
    return sb_pushfail(L, "connection closed");
  if (c->state == ST_LOST)
    return sb_pushfail(L, c->err);
  return sb_pushfail(L, "timeout");
}

/* conn:wait_notify([timeout]) -> channel, payload, pid | nil, "timeout" |
** nil, err */
static int
conn_wait_notify(lua_State *L)
{
  Conn *c = check_conn(L);
  double timeout = luaL_optnumber(L, 2, -1);
  lua_settop(L, 2);
  if (c->state == ST_LOST)
    return sb_pushfail(L, c->err);
  if (c->state == ST_CONNECTING)
    luaL_error(L, "conn:wait_notify: the connection is not open yet");
  if (c->cb_ref != LUA_NOREF)
    luaL_error(L, "conn:wait_notify: notifications go to the on_notify function");
  if (c->nco_ref != LUA_NOREF)
    luaL_error(L, "conn:wait_notify: another coroutine waits on this connection");
  /* read what is there only when no command is in flight: the watcher
  ** of a command must see the bytes that end it */
  if (c->state == ST_IDLE && !PQconsumeInput(c->pg)) {
    conn_lost(c, PQerrorMessage(c->pg));
    return sb_pushfail(L, c->err);
  }
  PGnotify *n = PQnotifies(c->pg);
  if (n != NULL)
    return push_notify(L, n);
  if (timeout == 0)
    return sb_pushfail(L, "timeout");
  sb_check_yieldable(L, "conn:wait_notify");
  Wait *g = push_guard(L, 1, c, 1);
  int gidx = lua_gettop(L);
  sb_pin_value(L, 1, &c->self_ref);
  c->timed_out = 0;
  c->nco_ref = sb_pin(L);
  c->nguard = g;
  g->active = 1;
  if (timeout > 0) {
    ev_now_update(sb_loop());
    ev_timer_set(&c->ntimer, timeout, 0.);
    ev_timer_start(sb_loop(), &c->ntimer);
  }
  rewatch(c);
  return lua_yieldk(L, 0, (lua_KContext)gidx, notify_k);
}

/* conn:on_notify(fn | nil): fn(channel, payload, pid) runs in a new
** coroutine for each notification. While set, the Conn stays pinned
** (close it to let it go). */
static int
conn_on_notify(lua_State *L)
{
  Conn *c = check_conn(L);
  if (!lua_isnoneornil(L, 2))
    luaL_checktype(L, 2, LUA_TFUNCTION);
  if (c->nco_ref != LUA_NOREF)
    luaL_error(L, "conn:on_notify: a coroutine waits in wait_notify");
  sb_unref(&c->cb_ref);
  if (!lua_isnoneornil(L, 2)) {
    sb_pin_value(L, 2, &c->cb_ref);
    sb_pin_value(L, 1, &c->self_ref);
  } else {
    maybe_unpin(c);
  }
  return 0;
}

/* }====================================================== */

/*
** {======================================================
** Connecting
** =======================================================
*/

/* Read the password file into out (size bytes, locked memory). 0, or -1
** with err filled (naming the file and the rule). */
static int
read_password(const char *path, char *out, size_t size, char *err, size_t esz)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
  if (fd < 0) {
    char why[200];
    nb_errmsg(why, sizeof why, NULL, errno);
    snprintf(err, esz, "password_file %s: %s", path, why);
    return -1;
  }
  struct stat st;
  int rc = -1;
  if (fstat(fd, &st) != 0) {
    char why[200];
    nb_errmsg(why, sizeof why, NULL, errno);
    snprintf(err, esz, "password_file %s: %s", path, why);
  } else if (!S_ISREG(st.st_mode)) {
    snprintf(err, esz, "password_file %s: not a regular file", path);
  } else if (st.st_mode & 077) {
    snprintf(err, esz, "password_file %s: readable by group or others (mode %04o): "
             "chmod 600 it", path, (unsigned)(st.st_mode & 07777));
  } else if ((size_t)st.st_size >= size) {
    snprintf(err, esz, "password_file %s: too long (at most %d bytes)", path,
             PASSWORD_MAX);
  } else {
    size_t n = 0;
    for (;;) {
      ssize_t r = read(fd, out + n, size - 1 - n);
      if (r < 0 && errno == EINTR)
        continue;
      if (r < 0) {
        char why[200];
        nb_errmsg(why, sizeof why, NULL, errno);
        snprintf(err, esz, "password_file %s: %s", path, why);
        n = 0;
        break;
      }
      if (r == 0)
        break;
      n += (size_t)r;
      if (n == size - 1)
        break;
    }
    if (n > 0 && out[n - 1] == '\n')
      n--;
    if (n > 0 && out[n - 1] == '\r')
      n--;
    out[n] = '\0';
    if (err[0] != '\0') {
      /* the read failed: err says why */
    } else if (n == 0) {
      snprintf(err, esz, "password_file %s: empty", path);
    } else if (strlen(out) != n || memchr(out, '\n', n) != NULL) {
      snprintf(err, esz, "password_file %s: must hold the password alone, on one line",
               path);
    } else {
      rc = 0;
    }
  }
  close(fd);
  return rc;
}

/* 0 when conninfo parses and holds no password; else -1 with err. */
static int
check_conninfo(const char *conninfo, char *err, size_t esz)
{
  char *perr = NULL;
  PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
  if (opts == NULL) {
    /* libpq's message may quote the string: not repeated */
    snprintf(err, esz, "conninfo: not a valid connection string or postgresql:// URL");
    if (perr != NULL)
      PQfreemem(perr);
    return -1;
  }
  int rc = 0;
  for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
    if (strcmp(o->keyword, "password") == 0 && o->val != NULL && o->val[0] != '\0') {
      snprintf(err, esz, "conninfo: holds a password; give it in password_file instead");
      rc = -1;
    }
  PQconninfoFree(opts);
  return rc;
}

static int
connect_k(lua_State *L, int status, lua_KContext ctx)
{
  (void)status;
  int gidx = (int)ctx;
  Wait *g = lua_touserdata(L, gidx);
  Conn *c = g->c;
  g->active = 0;
  if (c->guard == g)
    c->guard = NULL;
  lua_settop(L, gidx);
  if (c->state == ST_IDLE) {
    lua_pushvalue(L, gidx - 1);
    return 1;
  }
  luaL_pushfail(L);
  lua_pushstring(L, c->state == ST_CLOSED ? "connection closed" : c->err);
  conn_release(c);
  return 2;
}

/* pg.connect(conninfo [, opts]) -> Conn | nil, err
** opts: password_file, connect_timeout (seconds, default 10). */
static int
pg_connect(lua_State *L)
{
  size_t len;
  const char *conninfo = luaL_checklstring(L, 1, &len);
  if (strlen(conninfo) != len)
    luaL_error(L, "conninfo: contains a zero byte");
  if (!lua_isnoneornil(L, 2))
    luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  const char *pwfile = NULL;
  double timeout = DEFAULT_CONNECT_TIMEOUT;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "password_file");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "opts.password_file: expected a string");
      pwfile = lua_tostring(L, -1);
    }
    lua_getfield(L, 2, "connect_timeout");
    if (!lua_isnil(L, -1)) {
      if (!lua_isnumber(L, -1) || !(lua_tonumber(L, -1) > 0))
        luaL_error(L, "opts.connect_timeout: expected a positive number");
      timeout = (double)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    /* the password_file string stays on the stack, at 3 */
  }
  sb_check_yieldable(L, "pg.connect");
  char err[ERR_MAX] = "";
  if (check_conninfo(conninfo, err, sizeof err) != 0)
    return sb_pushfail(L, err);

  Conn *c = lua_newuserdatauv(L, sizeof *c, 1);
  memset(c, 0, sizeof *c);
  c->state = ST_CLOSED;
  c->co_ref = c->nco_ref = c->cb_ref = c->self_ref = LUA_NOREF;
  ev_init(&c->io, io_cb);
  c->io.data = c;
  ev_timer_init(&c->timer, timer_cb, timeout, 0.);
  c->timer.data = c;
  ev_timer_init(&c->ntimer, ntimer_cb, 0., 0.);
  c->ntimer.data = c;
  luaL_setmetatable(L, CONN_MT);
  int cidx = lua_gettop(L);
  lua_newtable(L);
  lua_setiuservalue(L, cidx, 1);        /* the statement cache */

  size_t maplen = 0;
  char *pw = NULL;
  if (pwfile != NULL) {
    pw = (char *)sb_secure_alloc(PASSWORD_MAX + 1, &maplen);
    if (pw == NULL)
      luaL_error(L, "not enough memory");
    if (read_password(pwfile, pw, PASSWORD_MAX + 1, err, sizeof err) != 0) {
      sb_secure_free((unsigned char *)pw, maplen);
      return sb_pushfail(L, err);
    }
  }
  const char *keys[] = { "dbname", "password", "client_encoding", NULL };
  const char *vals[] = { conninfo, pw, "UTF8", NULL };
  if (pw == NULL) {
    keys[1] = "client_encoding";
    vals[1] = "UTF8";
    keys[2] = vals[2] = NULL;
  }
  c->pg = PQconnectStartParams(keys, vals, 1);
  if (pw != NULL)
    sb_secure_free((unsigned char *)pw, maplen);
  if (c->pg == NULL)
    return sb_pushfail(L, "not enough memory");
  PQsetNoticeReceiver(c->pg, on_notice, c);
  if (PQstatus(c->pg) == CONNECTION_BAD) {
    set_err(c, NULL, PQerrorMessage(c->pg));
    c->state = ST_LOST;
    conn_release(c);
    return sb_pushfail(L, c->err);
  }
  c->state = ST_CONNECTING;
  Wait *g = push_guard(L, cidx, c, 0);
  int gidx = lua_gettop(L);
  sb_pin_value(L, cidx, &c->self_ref);
  c->co_ref = sb_pin(L);
  g->active = 1;
  c->guard = g;
  ev_now_update(sb_loop());
  ev_timer_start(sb_loop(), &c->timer);
  /* as if PQconnectPoll had answered PGRES_POLLING_WRITING */
  watch(c, EV_WRITE);
  return lua_yieldk(L, 0, (lua_KContext)gidx, connect_k);
}

/* }====================================================== */

/*
** {======================================================
** The rest of the Conn
** =======================================================
*/

static int
conn_close(lua_State *L)
{
  Conn *c = luaL_checkudata(L, 1, CONN_MT);
  conn_release(c);
  return 0;
}

static const char *
state_name(const Conn *c)
{
  switch (c->state) {
    case ST_CONNECTING: return "connecting";
    case ST_IDLE: return "idle";
    case ST_BUSY: return "busy";
    case ST_LOST: return "lost";
    default: return "closed";
  }
}

/* conn:status() -> "idle" | "busy" | "connecting" | "lost" | "closed",
** and the reason when lost */
static int
conn_status(lua_State *L)
{
  Conn *c = luaL_checkudata(L, 1, CONN_MT);
  lua_pushstring(L, state_name(c));
  if (c->state == ST_LOST) {
    lua_pushstring(L, c->err);
    return 2;
  }
  return 1;
}

/* conn:transaction_status() -> "idle" | "active" | "intrans" | "inerror"
** | "unknown" (libpq's PQtransactionStatus) */
static int
conn_transaction_status(lua_State *L)
{
  Conn *c = check_conn(L);
  static const char *const names[] = { "idle", "active", "intrans", "inerror",
                                       "unknown" };
  PGTransactionStatusType t = c->pg != NULL ? PQtransactionStatus(c->pg)
                                            : PQTRANS_UNKNOWN;
  lua_pushstring(L, (unsigned)t <= PQTRANS_UNKNOWN ? names[t] : "unknown");
  return 1;
}

static int
conn_backend_pid(lua_State *L)
{
  Conn *c = check_conn(L);
  lua_pushinteger(L, c->pg != NULL ? PQbackendPID(c->pg) : 0);
  return 1;
}

static int
conn_server_version(lua_State *L)
{
  Conn *c = check_conn(L);
  lua_pushinteger(L, c->pg != NULL ? PQserverVersion(c->pg) : 0);
  return 1;
}

/* conn:prepared() -> how many statements the cache holds */
static int
conn_prepared(lua_State *L)
{
  Conn *c = check_conn(L);
  lua_pushinteger(L, c->cached);
  return 1;
}

static int
conn_tostring(lua_State *L)
{
  Conn *c = luaL_checkudata(L, 1, CONN_MT);
  lua_pushfstring(L, CONN_MT " (%s)", state_name(c));
  return 1;
}

/* pg.bytea(s): s bound as binary (a bytea parameter). */
static int
pg_bytea(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TSTRING);
  lua_newuserdatauv(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, BYTEA_MT);
  return 1;
}

static int
bytea_tostring(lua_State *L)
{
  luaL_checkudata(L, 1, BYTEA_MT);
  lua_getiuservalue(L, 1, 1);
  lua_pushfstring(L, BYTEA_MT " (%d bytes)", (int)lua_rawlen(L, -1));
  return 1;
}

static int
pg_lib_version(lua_State *L)
{
  lua_pushinteger(L, PQlibVersion());
  return 1;
}

int
luaopen_core_pg(lua_State *L)
{
  static const luaL_Reg conn_meta[] = {
    { "__gc", conn_close },
    { "__close", conn_close },
    { "__tostring", conn_tostring },
    { NULL, NULL }
  };
  static const luaL_Reg conn_methods[] = {
    { "query", conn_query },
    { "exec", conn_exec },
    { "listen", conn_listen },
    { "unlisten", conn_unlisten },
    { "wait_notify", conn_wait_notify },
    { "on_notify", conn_on_notify },
    { "status", conn_status },
    { "transaction_status", conn_transaction_status },
    { "backend_pid", conn_backend_pid },
    { "server_version", conn_server_version },
    { "prepared", conn_prepared },
    { "close", conn_close },
    { NULL, NULL }
  };
  static const luaL_Reg wait_meta[] = {
    { "__gc", wait_close },
    { "__close", wait_close },
    { NULL, NULL }
  };
  static const luaL_Reg bytea_meta[] = {
    { "__tostring", bytea_tostring },
    { NULL, NULL }
  };
  static const luaL_Reg funcs[] = {
    { "connect", pg_connect },
    { "bytea", pg_bytea },
    { "lib_version", pg_lib_version },
    { NULL, NULL }
  };
  luaL_checkversion(L);
  sb_createmeta(L, CONN_MT, conn_meta, conn_methods);
  sb_lockmeta(L, CONN_MT);
  sb_createmeta(L, WAIT_MT, wait_meta, NULL);
  sb_lockmeta(L, WAIT_MT);
  sb_createmeta(L, BYTEA_MT, bytea_meta, NULL);
  sb_lockmeta(L, BYTEA_MT);
  luaL_newlib(L, funcs);
  return 1;
}
