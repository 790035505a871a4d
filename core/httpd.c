/*
** httpd.c -- core.httpd: an HTTP/1.1 server on the libev loop, on GNU
** libmicrohttpd (Debian's libmicrohttpd, never a hand-written parser), for
** the integrations' simulators and the MCP Streamable HTTP transport.
**
** MHD runs in external polling mode with its own epoll set
** (MHD_USE_EPOLL): libev watches that one epoll fd and a timer set from
** MHD_get_timeout, and calls MHD_run when either fires. Each complete
** request runs handler(req) in a new coroutine (sb_spawn); while the
** handler waits (loop.sleep, core.http, a call's answer) the connection is
** suspended (MHD_suspend_connection) and resumed when it returns
** (MHD_resume_connection wakes the epoll fd through MHD's eventfd). The
** handler returns `status, headers, body`, where body is a string or a
** Stream (httpd.stream(): a response written piece by piece, for
** server-sent events, read by MHD through a content reader callback that
** suspends the connection while the stream has nothing to send), or
** nothing to drop the connection without an answer.
**
** Lifetimes: a Request (a C struct) is counted: MHD holds one reference
** from the URI callback to the completion callback, a running handler one
** until it returns; an answer for a request MHD is done with is dropped.
** A Stream is a userdata, pinned in the registry while a response reads
** it; the Server is pinned while it is open. Server:close() inside MHD_run
** (a handler that closes its own server) is carried out when MHD_run
** returns: MHD_stop_daemon must not be called from MHD's callbacks.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <microhttpd.h>

#include "core.h"
#include "netbuf.h"

#define SERVER_MT  "core.httpd.Server"
#define STREAM_MT  "core.httpd.Stream"
#define REQREF_MT  "core.httpd.ReqRef"

#define DEFAULT_MAX_BODY      (1024 * 1024)
#define DEFAULT_IDLE_TIMEOUT  60.0
#define STREAM_BLOCK          (16 * 1024)

typedef struct Server Server;
typedef struct Req Req;
typedef struct Stream Stream;

enum { R_READING, R_RUNNING, R_ANSWERED, R_DROP };

struct Req {
  Server *srv;
  struct MHD_Connection *mc;    /* NULL once MHD is done with the request */
  Req *prev, *next;             /* the server's live requests */
  int refs;
  int state;
  int started;                  /* the access handler saw the headers */
  int running;                  /* its handler's coroutine has begun */
  int armed;                    /* a ReqRef holds the handler's reference */
  int suspended;
  int too_big;
  size_t dropped;
  char *uri;
  NbBuf body;
  struct MHD_Response *resp;    /* the handler's answer, not yet queued */
  unsigned status;
  int stream_ref;               /* the Stream the answer reads, or LUA_NOREF */
  Stream *stream;
};

struct Stream {
  NbBuf buf;
  int ended;                    /* close(): the response ends after buf */
  int gone;                     /* the client left or the server closed */
  int used;                     /* handed to a response once */
  int self_ref;                 /* pinned while a response reads it */
  int on_close_ref;
  struct MHD_Connection *mc;
  Server *srv;
  int suspended;
};

struct Server {
  struct MHD_Daemon *d;
  int open;                     /* the Lua view: false once close() ran */
  int in_run, stop_pending;
  ev_io io;
  ev_timer timer;
  int port;
  char addr[INET6_ADDRSTRLEN];  /* the bound address, numeric */
  int handler_ref, self_ref;
  size_t max_body;
  unsigned idle;
  lua_Integer active, accepted, requests, next_conn;
  Req *reqs;
};

static void
report(const char *what, const char *detail)
{
  char msg[512];
  snprintf(msg, sizeof msg, "core.httpd: %s%s%s", what,
           detail ? ": " : "", detail ? detail : "");
  sb_report_error(msg);
}

static void server_kick(Server *s);

/*
** {======================================================
** Requests
** =======================================================
*/

static void
req_unref(Req *r)
{
  if (--r->refs > 0)
    return;
  if (r->resp != NULL)
    MHD_destroy_response(r->resp);
  sb_unref(&r->stream_ref);
  nb_free(&r->body);
  free(r->uri);
  free(r);
}

/* MHD is done with r (answered, failed or the connection closed). */
static void
req_detach(Req *r)
{
  Server *s = r->srv;
  if (r->mc == NULL && r->prev == NULL && s->reqs != r)
    return;
  r->mc = NULL;
  if (r->prev != NULL)
    r->prev->next = r->next;
  else if (s->reqs == r)
    s->reqs = r->next;
  if (r->next != NULL)
    r->next->prev = r->prev;
  r->prev = r->next = NULL;
  if (r->state == R_RUNNING)
    r->state = R_DROP;
  req_unref(r);
}

/* MHD_OPTION_URI_LOG_CALLBACK: the request target as received, before MHD
** decodes it; its result is the request's context. */
static void *
on_uri(void *cls, const char *uri, struct MHD_Connection *mc)
{
  Server *s = cls;
  Req *r = calloc(1, sizeof *r);
  if (r == NULL)
    return NULL;
  r->uri = strdup(uri != NULL ? uri : "");
  if (r->uri == NULL) {
    free(r);
    return NULL;
  }
  r->srv = s;
  r->mc = mc;
  r->refs = 1;
  r->stream_ref = LUA_NOREF;
  r->next = s->reqs;
  if (s->reqs != NULL)
    s->reqs->prev = r;
  s->reqs = r;
  return r;
}

static void
on_completed(void *cls, struct MHD_Connection *mc, void **req_cls,
             enum MHD_RequestTerminationCode toe)
{
  (void)cls;
  (void)mc;
  (void)toe;
  Req *r = *req_cls;
  *req_cls = NULL;
  if (r != NULL)
    req_detach(r);
}

static void
on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
              enum MHD_ConnectionNotificationCode toe)
{
  (void)mc;
  Server *s = cls;
  if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
    s->accepted++;
    s->active++;
    *socket_context = (void *)(intptr_t)++s->next_conn;
  } else {
    s->active--;
  }
}

static enum MHD_Result
push_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  (void)kind;
  lua_State *L = cls;
  char name[256];
  size_t n = strlen(key);
  if (n >= sizeof name)
    n = sizeof name - 1;
  for (size_t i = 0; i < n; i++) {
    char ch = key[i];
    name[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
  }
  name[n] = '\0';
  if (value == NULL)
    value = "";
  size_t vlen = strlen(value);
  while (vlen > 0 && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
    vlen--;                     /* trailing optional whitespace (RFC 9110) */
  if (lua_getfield(L, -1, name) == LUA_TSTRING) {
    lua_pushliteral(L, ", ");
    lua_pushlstring(L, value, vlen);
    lua_concat(L, 3);
  } else {
    lua_pop(L, 1);
    lua_pushlstring(L, value, vlen);
  }
  lua_setfield(L, -2, name);
  return MHD_YES;
}

/* [-0, +1, m] The request table. */
static void
push_request(lua_State *L, Req *r, const char *method, const char *version)
{
  struct MHD_Connection *mc = r->mc;
  lua_createtable(L, 0, 10);
  lua_pushstring(L, method);
  lua_setfield(L, -2, "method");
  const char *q = strchr(r->uri, '?');
  size_t plen = q != NULL ? (size_t)(q - r->uri) : strlen(r->uri);
  lua_pushlstring(L, r->uri, plen);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, q != NULL ? q + 1 : "");
  lua_setfield(L, -2, "query");
  lua_newtable(L);
  MHD_get_connection_values(mc, MHD_HEADER_KIND, push_header, L);
  lua_setfield(L, -2, "headers");
  lua_pushlstring(L, r->body.len ? nb_data(&r->body) : "", r->body.len);
  lua_setfield(L, -2, "body");
  const union MHD_ConnectionInfo *ci =
    MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  char host[NI_MAXHOST] = "", serv[NI_MAXSERV] = "0";
  if (ci != NULL && ci->client_addr != NULL) {
    const struct sockaddr *sa = ci->client_addr;
    socklen_t sl = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                             : sizeof(struct sockaddr_in);
    if (getnameinfo(sa, sl, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      host[0] = '\0';
      strcpy(serv, "0");
    }
  }
  lua_pushstring(L, host);
  lua_setfield(L, -2, "remote");
  lua_pushinteger(L, atoi(serv));
  lua_setfield(L, -2, "remote_port");
  ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  lua_pushinteger(L, ci != NULL ? (lua_Integer)(intptr_t)ci->socket_context : 0);
  lua_setfield(L, -2, "conn");
  const char *v = version != NULL && strncmp(version, "HTTP/", 5) == 0 ? version + 5 : "1.1";
  lua_pushstring(L, v);
  lua_setfield(L, -2, "version");
  ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_PROTOCOL);
  lua_pushboolean(L, ci != NULL && ci->protocol != 0);
  lua_setfield(L, -2, "tls");
}

/* }====================================================== */

/*
** {======================================================
** Answers
** =======================================================
*/

static int
is_token(const char *s, size_t n)
{
  static const char extra[] = "!#$%&'*+-.^_`|~";
  if (n == 0)
    return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z')
          || (ch >= 'A' && ch <= 'Z') || (ch != '\0' && strchr(extra, ch))))
      return 0;
  }
  return 1;
}

static int
is_field_value(const char *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
      return 0;
  return 1;
}

static const char *
add_header(lua_State *L, struct MHD_Response *resp, const char *name, int idx)
{
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    return "header values must be strings or numbers";
  size_t vlen;
  lua_pushvalue(L, idx);
  const char *v = lua_tolstring(L, -1, &vlen);
  int ok = is_field_value(v, vlen);
  if (ok && MHD_add_response_header(resp, name, v) != MHD_YES)
    ok = -1;
  lua_pop(L, 1);
  if (ok == 0)
    return "a header value holds CR, LF or NUL";
  if (ok < 0)
    return "the header was refused";
  return NULL;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max);
static void stream_free(void *cls);

static int
is_stream(lua_State *L, int idx)
{
  return luaL_testudata(L, idx, STREAM_MT) != NULL;
}

/* Build r's response from status, headers, body at idx .. idx+2 of L.
** Returns NULL or what is wrong with the answer. */
static const char *
build_response(lua_State *L, Req *r, int idx)
{
  int isnum = 0;
  lua_Integer status = lua_tointegerx(L, idx, &isnum);
  if (!isnum || status < 100 || status > 999)
    return "the status must be an integer from 100 to 999";
  if (!lua_isnoneornil(L, idx + 1) && !lua_istable(L, idx + 1))
    return "the headers must be a table";
  int bt = lua_type(L, idx + 2);
  Stream *st = NULL;
  if (is_stream(L, idx + 2)) {
    st = lua_touserdata(L, idx + 2);
    if (st->used)
      return "a stream can answer one request only";
  } else if (bt != LUA_TNIL && bt != LUA_TNONE && bt != LUA_TSTRING) {
    return "the body must be a string or a stream";
  }
  size_t blen = 0;
  const char *body = bt == LUA_TSTRING ? lua_tolstring(L, idx + 2, &blen) : "";
  if (status < 200 || status == 204 || status == 304)
    blen = 0;
  struct MHD_Response *resp;
  if (st != NULL)
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK,
                                             stream_read, st, stream_free);
  else
    resp = MHD_create_response_from_buffer(blen, (void *)(uintptr_t)body,
                                           MHD_RESPMEM_MUST_COPY);
  if (resp == NULL)
    return "out of memory";
  if (lua_istable(L, idx + 1)) {
    lua_pushnil(L);
    while (lua_next(L, idx + 1) != 0) {
      const char *err = NULL;
      size_t nlen = 0;
      const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nlen) : NULL;
      if (name == NULL)
        err = "header names must be strings";
      else if (!is_token(name, nlen))
        err = "a header name is not an HTTP token";
      else if (strcasecmp(name, "content-length") == 0
               || strcasecmp(name, "transfer-encoding") == 0
               || strcasecmp(name, "date") == 0)
        ;                       /* set by the server */
      else if (lua_istable(L, -1)) {
        lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; err == NULL && i <= len; i++) {
          lua_geti(L, -1, i);
          err = add_header(L, resp, name, lua_gettop(L));
          lua_pop(L, 1);
        }
      } else {
        err = add_header(L, resp, name, lua_gettop(L));
      }
      lua_pop(L, 1);
      if (err != NULL) {
        lua_pop(L, 1);
        MHD_destroy_response(resp);
        return err;
      }
    }
  }
  if (st != NULL) {
    st->used = 1;
    lua_pushvalue(L, idx + 2);
    st->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, idx + 2);
    r->stream_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    r->stream = st;
  }
  r->resp = resp;
  r->status = (unsigned)status;
  return NULL;
}

/* A bodyless answer that closes the connection (errors, refusals). */
static struct MHD_Response *
plain_close(void)
{
  struct MHD_Response *resp = MHD_create_response_from_buffer(0, (void *)(uintptr_t)"",
                                                              MHD_RESPMEM_PERSISTENT);
  if (resp != NULL)
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
  return resp;
}

static void
answer_500(Req *r)
{
  if (r->resp != NULL) {
    MHD_destroy_response(r->resp);
    r->resp = NULL;
  }
  sb_unref(&r->stream_ref);
  r->stream = NULL;
  r->resp = plain_close();
  r->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
}

/* The handler coroutine's reference to its request: a full userdata on
** the coroutine's stack, so that a coroutine that never ends (the loop
** stopped while it waited) still gives its reference back when it is
** collected. r is NULL once given back. */
typedef struct ReqRef {
  Req *r;
} ReqRef;

static int
reqref_gc(lua_State *L)
{
  ReqRef *g = luaL_checkudata(L, 1, REQREF_MT);
  Req *r = g->r;
  g->r = NULL;
  if (r != NULL)
    req_unref(r);
  return 0;
}

/* The handler's coroutine: stack (ref, traceback, results or error). */
static int
run_handler_k(lua_State *L, int status, lua_KContext ctx)
{
  (void)ctx;
  ReqRef *g = lua_touserdata(L, 1);
  Req *r = g->r;
  if (r->mc != NULL && r->state == R_RUNNING) {
    if (status != LUA_OK && status != LUA_YIELD) {
      report("handler failed", lua_tostring(L, -1));
      answer_500(r);
      r->state = R_ANSWERED;
    } else if (lua_isnoneornil(L, 3)) {
      r->state = R_DROP;
    } else {
      const char *err = build_response(L, r, 3);
      if (err != NULL) {
        report("bad handler answer", err);
        answer_500(r);
      }
      r->state = R_ANSWERED;
    }
    if (r->suspended) {
      r->suspended = 0;
      MHD_resume_connection(r->mc);
      server_kick(r->srv);
    }
  } else if (status != LUA_OK && status != LUA_YIELD) {
    report("handler failed", lua_tostring(L, -1));
  }
  g->r = NULL;
  req_unref(r);
  return 0;
}

static int
run_handler(lua_State *L)
{
  ((ReqRef *)luaL_checkudata(L, 1, REQREF_MT))->r->running = 1;
  lua_pushcfunction(L, sb_traceback);
  lua_insert(L, 2);
  return run_handler_k(L, lua_pcallk(L, 1, 3, 2, 0, run_handler_k), 0);
}

static enum MHD_Result
queue(Req *r, struct MHD_Connection *mc)
{
  struct MHD_Response *resp = r->resp;
  r->resp = NULL;
  if (resp == NULL)
    return MHD_NO;
  if (r->stream != NULL) {
    r->stream->mc = mc;
    r->stream->srv = r->srv;
    /* a stream may stay quiet for long: no idle timeout while it is open */
    MHD_set_connection_option(mc, MHD_CONNECTION_OPTION_TIMEOUT, 0);
  }
  enum MHD_Result ok = MHD_queue_response(mc, r->status, resp);
  MHD_destroy_response(resp);
  return ok;
}

static enum MHD_Result
refuse(Req *r, struct MHD_Connection *mc, unsigned status)
{
  r->resp = plain_close();
  r->status = status;
  r->state = R_ANSWERED;
  return queue(r, mc);
}

/* What start_handler needs, through sb_protect's light userdata. */
typedef struct Start {
  Req *r;
  const char *method;
  const char *version;
} Start;

/* [-0, +0, m] handler(req) in a new coroutine (run_handler). */
static int
start_handler(lua_State *L)
{
  Start *a = lua_touserdata(L, 1);
  luaL_checkstack(L, 8, NULL);
  lua_pushcfunction(L, run_handler);
  ReqRef *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->r = NULL;
  luaL_setmetatable(L, REQREF_MT);
  g->r = a->r;
  a->r->armed = 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, a->r->srv->handler_ref);
  push_request(L, a->r, a->method, a->version);
  sb_spawn(L, 3);
  return 0;
}

static enum MHD_Result
on_access(void *cls, struct MHD_Connection *mc, const char *url,
          const char *method, const char *version, const char *upload_data,
          size_t *upload_size, void **req_cls)
{
  (void)url;
  Server *s = cls;
  Req *r = *req_cls;
  if (r == NULL || !s->open)
    return MHD_NO;
  if (r->state == R_ANSWERED)
    return queue(r, mc);
  if (r->state == R_DROP)
    return MHD_NO;
  if (r->state == R_RUNNING)
    return MHD_YES;             /* resumed early: the answer is not there yet */
  if (!r->started) {
    r->started = 1;
    const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > s->max_body)
      return refuse(r, mc, MHD_HTTP_CONTENT_TOO_LARGE);
    return MHD_YES;
  }
  if (*upload_size > 0) {
    /* a chunked body over max_body: MHD takes an answer only once the
    ** body is read, so the rest is read and dropped (up to a bound) */
    if (r->too_big || r->body.len + *upload_size > s->max_body) {
      r->dropped += *upload_size;
      *upload_size = 0;
      nb_free(&r->body);
      r->too_big = 1;
      return r->dropped > 4 * s->max_body + 1048576 ? MHD_NO : MHD_YES;
    }
    if (nb_add(&r->body, upload_data, *upload_size) != 0)
      return MHD_NO;
    *upload_size = 0;
    return MHD_YES;
  }
  if (r->too_big)
    return refuse(r, mc, MHD_HTTP_CONTENT_TOO_LARGE);
  /* the request is complete: run the handler, in Lua under protection
  ** (a memory error must not unwind through MHD and ev_run) */
  r->state = R_RUNNING;
  r->refs++;
  s->requests++;
  Start start = { r, method, version };
  if (sb_protect(start_handler, &start, "core.httpd: request") != 0 && !r->running) {
    /* the coroutine never began: answer here; the handler's reference
    ** goes back now, or when its ReqRef is collected */
    if (!r->armed)
      req_unref(r);
    return refuse(r, mc, MHD_HTTP_INTERNAL_SERVER_ERROR);
  }
  if (r->mc == NULL || !s->open)
    return MHD_NO;
  if (r->state == R_RUNNING) {
    r->suspended = 1;
    MHD_suspend_connection(mc);
    return MHD_YES;
  }
  if (r->state == R_ANSWERED)
    return queue(r, mc);
  return MHD_NO;
}

/* }====================================================== */

/*
** {======================================================
** Streams (a response written piece by piece)
** =======================================================
*/

/* [-0, +0, m] st's on_close in a new coroutine. */
static int
start_on_close(lua_State *L)
{
  Stream *st = lua_touserdata(L, 1);
  luaL_checkstack(L, 4, NULL);
  lua_rawgeti(L, LUA_REGISTRYINDEX, st->on_close_ref);
  sb_unref(&st->on_close_ref);
  sb_spawn(L, 0);
  return 0;
}

static void
stream_gone(Stream *st)
{
  if (st->gone || st->ended)
    return;
  st->gone = 1;
  if (st->on_close_ref != LUA_NOREF && st->on_close_ref != LUA_REFNIL)
    sb_protect(start_on_close, st, "core.httpd: stream on_close");
}

static ssize_t
stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
  (void)pos;
  Stream *st = cls;
  if (st->buf.len > 0) {
    size_t n = st->buf.len < max ? st->buf.len : max;
    memcpy(buf, nb_data(&st->buf), n);
    nb_consume(&st->buf, n);
    return (ssize_t)n;
  }
  if (st->ended)
    return MHD_CONTENT_READER_END_OF_STREAM;
  if (st->gone || st->mc == NULL)
    return MHD_CONTENT_READER_END_WITH_ERROR;
  if (!st->suspended) {
    st->suspended = 1;
    MHD_suspend_connection(st->mc);
  }
  return 0;
}

/* The response is done with the stream: the client has it all or left. */
static void
stream_free(void *cls)
{
  Stream *st = cls;
  st->mc = NULL;
  st->suspended = 0;
  stream_gone(st);
  nb_free(&st->buf);
  sb_unref(&st->self_ref);
}

static void
stream_wake(Stream *st)
{
  if (st->suspended && st->mc != NULL) {
    st->suspended = 0;
    MHD_resume_connection(st->mc);
    server_kick(st->srv);
  }
}

static Stream *
check_stream(lua_State *L)
{
  return luaL_checkudata(L, 1, STREAM_MT);
}

static int
l_stream(lua_State *L)
{
  int has_cb = 0;
  if (lua_istable(L, 1)) {
    int t = lua_getfield(L, 1, "on_close");
    if (t != LUA_TFUNCTION && t != LUA_TNIL)
      return luaL_error(L, "httpd.stream: on_close must be a function");
    has_cb = t == LUA_TFUNCTION;
  } else if (!lua_isnoneornil(L, 1)) {
    return luaL_error(L, "httpd.stream: options must be a table");
  } else {
    lua_pushnil(L);
  }
  int cb = lua_gettop(L);
  Stream *st = lua_newuserdatauv(L, sizeof *st, 0);
  memset(st, 0, sizeof *st);
  st->self_ref = st->on_close_ref = LUA_NOREF;
  luaL_setmetatable(L, STREAM_MT);
  if (has_cb) {
    lua_pushvalue(L, cb);
    st->on_close_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 1;
}

static int
stream_write(lua_State *L)
{
  Stream *st = check_stream(L);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  if (st->ended || st->gone) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (nb_add(&st->buf, data, n) != 0)
    return luaL_error(L, "httpd.stream: out of memory");
  stream_wake(st);
  lua_pushboolean(L, 1);
  return 1;
}

/* End the response after what was written (idempotent). */
static int
stream_close(lua_State *L)
{
  Stream *st = check_stream(L);
  if (!st->ended) {
    st->ended = 1;
    sb_unref(&st->on_close_ref);
    stream_wake(st);
  }
  return 0;
}

static int
stream_closed(lua_State *L)
{
  Stream *st = check_stream(L);
  lua_pushboolean(L, st->ended || st->gone);
  return 1;
}

static int
stream_gc(lua_State *L)
{
  Stream *st = check_stream(L);
  sb_unref(&st->on_close_ref);
  nb_free(&st->buf);
  return 0;
}

/* }====================================================== */

/*
** {======================================================
** The server and its libev watchers
** =======================================================
*/

static void server_stop(Server *s);

static void
rearm(Server *s)
{
  struct ev_loop *loop = sb_loop();
  ev_timer_stop(loop, &s->timer);
  MHD_UNSIGNED_LONG_LONG ms = 0;
  if (MHD_get_timeout(s->d, &ms) == MHD_YES) {
    ev_timer_set(&s->timer, (double)ms / 1000.0, 0.);
    ev_timer_start(loop, &s->timer);
  }
}

/* A connection was resumed outside MHD_run: run MHD on the next loop
** iteration (MHD's eventfd does not reach the epoll fd libev watches in
** external polling mode). */
static void
server_kick(Server *s)
{
  if (s == NULL || s->d == NULL || s->in_run)
    return;
  struct ev_loop *loop = sb_loop();
  ev_timer_stop(loop, &s->timer);
  ev_timer_set(&s->timer, 0., 0.);
  ev_timer_start(loop, &s->timer);
}

static void
drive(Server *s)
{
  if (s->d == NULL)
    return;
  sb_anchor(s->self_ref);
  s->in_run = 1;
  MHD_run(s->d);
  s->in_run = 0;
  if (s->stop_pending)
    server_stop(s);
  else if (s->d != NULL)
    rearm(s);
  sb_unanchor();
}

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  (void)revents;
  drive(w->data);
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)revents;
  drive(w->data);
}

/* Stop the daemon: answers still being made are dropped, streams end. */
static void
server_stop(Server *s)
{
  s->stop_pending = 0;
  if (s->d == NULL)
    return;
  struct ev_loop *loop = sb_loop();
  ev_io_stop(loop, &s->io);
  ev_timer_stop(loop, &s->timer);
  for (Req *r = s->reqs; r != NULL; r = r->next) {
    if (r->state == R_RUNNING)
      r->state = R_DROP;
    if (r->suspended && r->mc != NULL) {
      r->suspended = 0;
      MHD_resume_connection(r->mc);
    }
    if (r->stream != NULL && r->stream_ref != LUA_NOREF) {
      r->stream->gone = 1;
      stream_wake(r->stream);
    }
  }
  struct MHD_Daemon *d = s->d;
  s->d = NULL;
  MHD_stop_daemon(d);
  while (s->reqs != NULL)
    req_detach(s->reqs);
  sb_unref(&s->handler_ref);
  sb_unref(&s->self_ref);
}

static void
server_release(Server *s)
{
  s->open = 0;
  if (s->d == NULL)
    return;
  if (s->in_run)
    s->stop_pending = 1;
  else
    server_stop(s);
}

static Server *
check_server(lua_State *L)
{
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (!s->open)
    luaL_error(L, "attempt to use a closed server");
  return s;
}

static int
server_close(lua_State *L)
{
  server_release(luaL_checkudata(L, 1, SERVER_MT));
  return 0;
}

static int
server_port(lua_State *L)
{
  lua_pushinteger(L, check_server(L)->port);
  return 1;
}

static int
server_address(lua_State *L)
{
  lua_pushstring(L, check_server(L)->addr);
  return 1;
}

static int
server_closed(lua_State *L)
{
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  lua_pushboolean(L, !s->open);
  return 1;
}

static int
server_stats(lua_State *L)
{
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, s->active);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, s->accepted);
  lua_setfield(L, -2, "accepted");
  lua_pushinteger(L, s->requests);
  lua_setfield(L, -2, "requests");
  return 1;
}

static int
server_tostring(lua_State *L)
{
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->open)
    lua_pushfstring(L, SERVER_MT " (port %d)", s->port);
  else
    lua_pushliteral(L, SERVER_MT " (closed)");
  return 1;
}

static lua_Integer
opt_integer(lua_State *L, const char *key, lua_Integer def)
{
  lua_getfield(L, 1, key);
  lua_Integer v = def;
  if (!lua_isnil(L, -1)) {
    int isnum;
    v = lua_tointegerx(L, -1, &isnum);
    if (!isnum)
      luaL_error(L, "httpd.listen: %s must be an integer", key);
  }
  lua_pop(L, 1);
  return v;
}

static const char *
opt_string(lua_State *L, const char *key)
{
  lua_getfield(L, 1, key);
  const char *v = NULL;
  if (lua_type(L, -1) == LUA_TSTRING)
    v = lua_tostring(L, -1);
  else if (!lua_isnil(L, -1))
    luaL_error(L, "httpd.listen: %s must be a string", key);
  lua_pop(L, 1);                /* the options table keeps the string alive */
  return v;
}

/* Bind and listen on host:port; the fd or -1 with *err set. */
static int
bind_socket(const char *host, int port, int backlog, int *family, int *err)
{
  char pstr[16];
  snprintf(pstr, sizeof pstr, "%d", port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host, pstr, &hints, &res);
  if (gai != 0) {
    *err = -gai;
    return -1;
  }
  int fd = -1;
  *err = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0) {
      *err = errno;
      continue;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0
        || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
      *err = errno;
      close(fd);
      fd = -1;
      continue;
    }
    *family = ai->ai_family;
    break;
  }
  freeaddrinfo(res);
  if (fd < 0 && *err == 0)
    *err = EADDRNOTAVAIL;
  return fd;
}

/* The port fd is bound to (0 if unknown); its numeric address in addr. */
static int
local_port(int fd, char *addr, size_t addrlen)
{
  struct sockaddr_storage ss;
  socklen_t slen = sizeof ss;
  addr[0] = '\0';
  if (getsockname(fd, (struct sockaddr *)&ss, &slen) != 0)
    return 0;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    if (inet_ntop(AF_INET, &sin->sin_addr, addr, (socklen_t)addrlen) == NULL)
      addr[0] = '\0';
    return ntohs(sin->sin_port);
  }
  if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_ntop(AF_INET6, &sin6->sin6_addr, addr, (socklen_t)addrlen) == NULL)
      addr[0] = '\0';
    return ntohs(sin6->sin6_port);
  }
  return 0;
}

/* A listening TCP socket passed in (systemd socket activation): checked,
** made non-blocking, its family in *family; 0 or an errno. */
static int
adopt_socket(int fd, int *family)
{
  int type = 0, accepting = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
    return errno;
  len = sizeof accepting;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0)
    return errno;
  struct sockaddr_storage ss;
  socklen_t slen = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &slen) != 0)
    return errno;
  if (type != SOCK_STREAM || !accepting
      || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
    return ENOTSOCK;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
    return errno;
  *family = ss.ss_family;
  return 0;
}

/* httpd.socket_address(fd) -> numeric address, port of a passed listening
** TCP socket (nothing changes on it), or nil, err. */
static int
l_socket_address(lua_State *L)
{
  lua_Integer fd = luaL_checkinteger(L, 1);
  if (fd < 0 || fd > INT_MAX)
    return luaL_error(L, "httpd.socket_address: invalid fd");
  int family = 0, err = adopt_socket((int)fd, &family);
  if (err != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "fd %d is not a listening TCP socket (%s)", (int)fd, strerror(err));
    return 2;
  }
  char addr[INET6_ADDRSTRLEN];
  int port = local_port((int)fd, addr, sizeof addr);
  lua_pushstring(L, addr);
  lua_pushinteger(L, port);
  return 2;
}

static int
l_listen(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "host");
  const char *host = lua_isnil(L, -1) ? "127.0.0.1" : lua_tostring(L, -1);
  if (host == NULL || lua_type(L, -1) == LUA_TNUMBER)
    return luaL_error(L, "httpd.listen: host must be a string");
  lua_Integer port = opt_integer(L, "port", 0);
  lua_Integer max_body = opt_integer(L, "max_body", DEFAULT_MAX_BODY);
  lua_Integer backlog = opt_integer(L, "backlog", 511);
  lua_Integer passed = opt_integer(L, "fd", -1);
  lua_getfield(L, 1, "idle_timeout");
  double idle = luaL_optnumber(L, -1, DEFAULT_IDLE_TIMEOUT);
  lua_pop(L, 1);
  const char *cert = opt_string(L, "tls_cert");
  const char *key = opt_string(L, "tls_key");
  if (port < 0 || port > 65535)
    return luaL_error(L, "httpd.listen: port must be from 0 to 65535");
  if (max_body < 0)
    return luaL_error(L, "httpd.listen: max_body must not be negative");
  if (backlog <= 0 || backlog > 65535)
    return luaL_error(L, "httpd.listen: invalid backlog");
  if ((cert == NULL) != (key == NULL))
    return luaL_error(L, "httpd.listen: tls_cert and tls_key go together");
  if (lua_getfield(L, 1, "handler") != LUA_TFUNCTION)
    return luaL_error(L, "httpd.listen: handler must be a function");
  int hidx = lua_gettop(L);
  if (cert != NULL && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    lua_pushnil(L);
    lua_pushliteral(L, "TLS is not available in this libmicrohttpd");
    return 2;
  }

  Server *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  s->handler_ref = s->self_ref = LUA_NOREF;
  s->max_body = (size_t)max_body;
  /* MHD counts whole seconds; 0 would mean never */
  s->idle = idle > 0 ? (unsigned)(idle + 0.999) : 0;
  luaL_setmetatable(L, SERVER_MT);

  int family = AF_INET, err = 0;
  int fd;
  if (passed >= 0) {
    if (passed > INT_MAX)
      return luaL_error(L, "httpd.listen: invalid fd");
    fd = (int)passed;
    err = adopt_socket(fd, &family);
    if (err != 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "fd %d is not a listening TCP socket (%s)", fd, strerror(err));
      return 2;
    }
  } else {
    fd = bind_socket(host, (int)port, (int)backlog, &family, &err);
  }
  if (fd < 0) {
    if (err < 0) {
      lua_pushnil(L);
      lua_pushfstring(L, "resolve %s: %s", host, gai_strerror(-err));
      return 2;
    }
    return sb_push_errno(L, "bind", err);
  }
  s->port = local_port(fd, s->addr, sizeof s->addr);
  unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
  if (family == AF_INET6)
    flags |= MHD_USE_IPv6;
  if (cert != NULL)
    flags |= MHD_USE_TLS;
  struct MHD_OptionItem tls[] = {
    { MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)(uintptr_t)cert },
    { MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)(uintptr_t)key },
    { MHD_OPTION_END, 0, NULL },
  };
  struct MHD_OptionItem none[] = { { MHD_OPTION_END, 0, NULL } };
  s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_access, s,
                          MHD_OPTION_LISTEN_SOCKET, fd,
                          MHD_OPTION_CONNECTION_TIMEOUT, s->idle,
                          MHD_OPTION_URI_LOG_CALLBACK, on_uri, s,
                          MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                          MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                          MHD_OPTION_ARRAY, cert != NULL ? tls : none,
                          MHD_OPTION_END);
  if (s->d == NULL) {
    close(fd);
    lua_pushnil(L);
    lua_pushstring(L, cert != NULL ? "the HTTP server did not start (check tls_cert and tls_key)"
                                   : "the HTTP server did not start");
    return 2;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_EPOLL_FD);
  if (di == NULL) {
    MHD_stop_daemon(s->d);
    s->d = NULL;
    lua_pushnil(L);
    lua_pushliteral(L, "the HTTP server has no epoll descriptor");
    return 2;
  }
  s->open = 1;
  lua_pushvalue(L, hidx);
  s->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ev_io_init(&s->io, io_cb, di->epoll_fd, EV_READ);
  s->io.data = s;
  ev_init(&s->timer, timer_cb);
  s->timer.data = s;
  ev_io_start(sb_loop(), &s->io);
  rearm(s);
  return 1;
}

/* }====================================================== */

static const luaL_Reg httpd_funcs[] = {
  { "listen", l_listen },
  { "stream", l_stream },
  { "socket_address", l_socket_address },
  { NULL, NULL }
};

static const luaL_Reg server_meth[] = {
  { "port", server_port },
  { "address", server_address },
  { "close", server_close },
  { "closed", server_closed },
  { "stats", server_stats },
  { NULL, NULL }
};

static const luaL_Reg stream_meth[] = {
  { "write", stream_write },
  { "close", stream_close },
  { "closed", stream_closed },
  { NULL, NULL }
};

int
luaopen_core_httpd(lua_State *L)
{
  static const luaL_Reg server_meta[] = {
    { "__gc", server_close },
    { "__close", server_close },
    { "__tostring", server_tostring },
    { NULL, NULL },
  };
  static const luaL_Reg reqref_meta[] = { { "__gc", reqref_gc }, { NULL, NULL } };
  static const luaL_Reg stream_meta[] = { { "__gc", stream_gc }, { NULL, NULL } };
  sb_createmeta(L, SERVER_MT, server_meta, server_meth);
  sb_createmeta(L, REQREF_MT, reqref_meta, NULL);
  sb_createmeta(L, STREAM_MT, stream_meta, stream_meth);
  luaL_newlib(L, httpd_funcs);
  lua_pushboolean(L, MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES);
  lua_setfield(L, -2, "tls");
  return 1;
}
