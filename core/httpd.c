/*
** httpd.c -- core.httpd: a small HTTP/1.1 server on the libev loop, for
** the Twilio simulator and later HTTP transports.
**
** Requests are parsed by Debian's libhttp-parser (never by hand). Each
** complete request runs handler(req) in a new coroutine (sb_spawn); the
** handler may wait (loop.sleep, core.http) and the response is written
** when it returns: `return status, headers, body`, or nothing to drop the
** connection without an answer (fault injection).
**
** One request at a time per connection: after a message is complete the
** parser is paused and the socket is not read until the response is
** queued, so pipelined requests are answered in order. Output goes to a
** nonblocking write buffer drained by an ev_io watcher (netbuf.c, as for
** core.loop's streams).
**
** Lifetime rules (liolib / luv, as in loop.c): every userdata is created
** closed before its resource is acquired; close is idempotent and is also
** __gc and __close; an open Server or Conn is pinned in the registry
** (self_ref) and every callback anchors it on the main stack while it
** runs. A handler's coroutine holds its Conn as a stack slot, so a
** response for a connection closed meanwhile is simply dropped.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <http_parser.h>

#include "core.h"
#include "netbuf.h"

#define SERVER_MT  "core.httpd.Server"
#define CONN_MT    "core.httpd.Conn"

#define OUT_HIGH              (1024u * 1024u) /* stop parsing while above */
#define DEFAULT_MAX_BODY      (1024 * 1024)
#define DEFAULT_IDLE_TIMEOUT  60.0
#define LINGER_TIMEOUT        2.0

/* Append one char, or a C string, to b; 0 or -1 (out of memory). */
static int
buf_addc(NbBuf *b, char c)
{
  return nb_add(b, &c, 1);
}

static int
buf_adds(NbBuf *b, const char *str)
{
  return nb_add(b, str, strlen(str));
}

typedef struct Server Server;
typedef struct Conn Conn;

struct Server {
  NbListener ln;                /* ln.fd: -1 once closed */
  int port;
  int handler_ref;
  int self_ref;
  size_t max_body;
  double idle_timeout;
  Conn *conns;                  /* open connections */
  lua_Integer active, accepted, requests;
};

struct Conn {
  ev_io rio;
  ev_io wio;
  ev_timer timer;               /* keep-alive idle timeout; lingering close */
  int fd;
  int open;
  int self_ref;
  Server *srv;                  /* NULL once closed */
  Conn *prev, *next;
  lua_Integer id;
  size_t max_body;
  double idle_timeout;
  char remote[INET6_ADDRSTRLEN];
  int remote_port;
  http_parser parser;
  NbBuf in;                     /* received, not yet parsed */
  NbBuf out;                    /* queued response bytes */
  /* the request being parsed */
  NbBuf url;
  NbBuf hdrs;                   /* "name\0value\0" pairs, names lowercase */
  NbBuf body;
  size_t vstart;                /* offset of the current header value */
  int hstate;                   /* 0 none, 1 in a name, 2 in a value */
  int expect_continue;
  /* connection state */
  int ready;                    /* a complete request waits for dispatch */
  int busy;                     /* its handler is running */
  int keep_alive;               /* of the request being answered */
  int http_minor;
  int is_head;
  int method;
  int error;                    /* HTTP status to refuse the request with */
  int in_process;               /* conn_process is on the C stack */
  int close_after;              /* close once the output is written */
  int linger;                   /* ... after a lingering half-close */
  int lingering;
};

static const http_parser_settings parser_settings;

/*
** {======================================================
** Connections: close, write, linger
** =======================================================
*/

/* Close now; queued output is dropped. Never runs Lua code (it is also
** __gc). */
static void
conn_release(Conn *c)
{
  if (!c->open)
    return;
  struct ev_loop *loop = sb_loop();
  c->open = 0;
  ev_io_stop(loop, &c->rio);
  ev_io_stop(loop, &c->wio);
  ev_timer_stop(loop, &c->timer);
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
  nb_free(&c->in);
  nb_free(&c->out);
  nb_free(&c->url);
  nb_free(&c->hdrs);
  nb_free(&c->body);
  if (c->srv != NULL) {
    if (c->prev != NULL)
      c->prev->next = c->next;
    else
      c->srv->conns = c->next;
    if (c->next != NULL)
      c->next->prev = c->prev;
    c->srv->active--;
    c->srv = NULL;
  }
  c->prev = c->next = NULL;
  sb_unref(&c->self_ref);
}

/* The output is written and the connection is to end: close it, or first
** half-close and drain what the client still sends, so that unread bytes
** do not turn our last answer into a reset. */
static void
conn_finish(Conn *c)
{
  if (!c->linger) {
    conn_release(c);
    return;
  }
  c->lingering = 1;
  shutdown(c->fd, SHUT_WR);
  ev_timer_stop(sb_loop(), &c->timer);
  ev_timer_set(&c->timer, LINGER_TIMEOUT, 0.);
  ev_timer_start(sb_loop(), &c->timer);
  ev_io_start(sb_loop(), &c->rio);
}

/* Queue bytes for the client: written at once when possible, the rest
** drained by the write watcher. May close c (write error). */
static void
conn_write(Conn *c, const char *data, size_t len)
{
  if (!c->open)
    return;
  int err;
  int r = nb_write(&c->out, c->fd, NB_SEND, data, len, SIZE_MAX, &err);
  if (r == NB_ERROR) {
    conn_release(c);
  } else if (r < 0) {
    sb_report_error("core.httpd: out of memory queueing a response");
    conn_release(c);
  } else if (r > 0) {
    ev_io_start(sb_loop(), &c->wio);
  }
}

static void conn_process(lua_State *L, Conn *c);

static void
write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)revents;
  Conn *c = w->data;
  sb_anchor(c->self_ref);
  int err;
  if (c->open && nb_drain(&c->out, c->fd, NB_SEND, &err) == NB_ERROR)
    conn_release(c);
  if (c->open && c->out.len == 0) {
    ev_io_stop(loop, &c->wio);
    if (c->close_after && !c->busy)
      conn_finish(c);
    else
      conn_process(sb_main(), c);       /* parsing may wait for the drain */
  }
  sb_unanchor();
}

/* Refuse the request being parsed with a short plain-text answer and end
** the connection. */
static void
conn_refuse(Conn *c, int status)
{
  const char *reason = http_status_str((enum http_status)status);
  char msg[256];
  int n = snprintf(msg, sizeof msg,
                   "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                   "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
                   status, reason, strlen(reason) + 1, reason);
  c->close_after = 1;
  c->linger = 1;
  c->ready = 0;
  ev_io_stop(sb_loop(), &c->rio);
  conn_write(c, msg, (size_t)n);
  if (c->open && c->out.len == 0)
    conn_finish(c);
}

/* }====================================================== */

/*
** {======================================================
** Parser callbacks (no Lua code runs in them)
** =======================================================
*/

static int
on_message_begin(http_parser *p)
{
  Conn *c = p->data;
  nb_clear(&c->url);
  nb_clear(&c->hdrs);
  nb_clear(&c->body);
  c->hstate = 0;
  c->expect_continue = 0;
  return 0;
}

static int
on_url(http_parser *p, const char *at, size_t len)
{
  Conn *c = p->data;
  return nb_add(&c->url, at, len);
}

/* End the current header value: trailing blanks go, a NUL ends it. */
static int
end_value(Conn *c)
{
  while (c->hdrs.len > c->vstart) {
    char ch = c->hdrs.p[c->hdrs.off + c->hdrs.len - 1];
    if (ch != ' ' && ch != '\t')
      break;
    c->hdrs.len--;
  }
  return buf_addc(&c->hdrs, '\0');
}

static int
on_header_field(http_parser *p, const char *at, size_t len)
{
  Conn *c = p->data;
  if (c->hstate == 2 && end_value(c) != 0)
    return -1;
  c->hstate = 1;
  if (nb_reserve(&c->hdrs, len) != 0)
    return -1;
  for (size_t i = 0; i < len; i++) {
    char ch = at[i];
    if (ch >= 'A' && ch <= 'Z')
      ch = (char)(ch - 'A' + 'a');
    c->hdrs.p[c->hdrs.off + c->hdrs.len++] = ch;
  }
  return 0;
}

static int
on_header_value(http_parser *p, const char *at, size_t len)
{
  Conn *c = p->data;
  if (c->hstate != 2) {
    if (buf_addc(&c->hdrs, '\0') != 0)
      return -1;
    c->vstart = c->hdrs.len;
    c->hstate = 2;
  }
  return nb_add(&c->hdrs, at, len);
}

static int
on_headers_complete(http_parser *p)
{
  Conn *c = p->data;
  if (c->hstate == 1 && buf_addc(&c->hdrs, '\0') != 0)
    return -1;                  /* a name without a value */
  if (c->hstate != 0 && end_value(c) != 0)
    return -1;
  c->hstate = 0;
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->max_body) {
    c->error = 413;
    return -1;
  }
  /* Expect: 100-continue */
  const char *h = nb_data(&c->hdrs), *end = h + c->hdrs.len;
  while (h != NULL && h < end) {
    const char *v = h + strlen(h) + 1;
    if (strcmp(h, "expect") == 0 && strcasecmp(v, "100-continue") == 0)
      c->expect_continue = 1;
    h = v + strlen(v) + 1;
  }
  if (c->expect_continue && p->http_minor >= 1) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    conn_write(c, cont, sizeof cont - 1);
    if (!c->open)
      return -1;
  }
  return 0;
}

static int
on_body(http_parser *p, const char *at, size_t len)
{
  Conn *c = p->data;
  if (len > c->max_body || c->body.len > c->max_body - len) {
    c->error = 413;
    return -1;
  }
  return nb_add(&c->body, at, len);
}

static int
on_message_complete(http_parser *p)
{
  Conn *c = p->data;
  c->ready = 1;
  c->keep_alive = http_should_keep_alive(p) && !p->upgrade;
  c->http_minor = p->http_minor;
  c->method = (int)p->method;
  c->is_head = p->method == HTTP_HEAD;
  http_parser_pause(p, 1);      /* one request at a time */
  return 0;
}

static const http_parser_settings parser_settings = {
  .on_message_begin = on_message_begin,
  .on_url = on_url,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
};

/* }====================================================== */

/*
** {======================================================
** Running the handler and writing its answer
** =======================================================
*/

/* [-0, +1, m] The request table of the message just parsed. */
static void
push_request(lua_State *L, Conn *c)
{
  lua_createtable(L, 0, 10);
  lua_pushstring(L, http_method_str((enum http_method)c->method));
  lua_setfield(L, -2, "method");

  const char *url = nb_data(&c->url);
  size_t ulen = c->url.len;
  if (url == NULL)
    url = "";
  const char *path = url, *query = "";
  size_t plen = ulen, qlen = 0;
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (ulen > 0 && ulen <= 0xffff
      && http_parser_parse_url(url, ulen, c->method == HTTP_CONNECT, &u) == 0) {
    if (u.field_set & (1 << UF_PATH)) {
      path = url + u.field_data[UF_PATH].off;
      plen = u.field_data[UF_PATH].len;
    } else {
      path = "/";
      plen = 1;
    }
    if (u.field_set & (1 << UF_QUERY)) {
      query = url + u.field_data[UF_QUERY].off;
      qlen = u.field_data[UF_QUERY].len;
    }
  } else {                      /* "*" or a very long target */
    const char *qm = ulen > 0 ? memchr(url, '?', ulen) : NULL;
    if (qm != NULL) {
      plen = (size_t)(qm - url);
      query = qm + 1;
      qlen = ulen - plen - 1;
    }
  }
  lua_pushlstring(L, path, plen);
  lua_setfield(L, -2, "path");
  lua_pushlstring(L, query, qlen);
  lua_setfield(L, -2, "query");

  /* headers: lowercase names; repeated ones joined with ", " */
  lua_newtable(L);
  const char *h = nb_data(&c->hdrs), *end = h + c->hdrs.len;
  while (h != NULL && h < end) {
    const char *v = h + strlen(h) + 1;
    if (lua_getfield(L, -1, h) == LUA_TSTRING) {
      lua_pushliteral(L, ", ");
      lua_pushstring(L, v);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushstring(L, v);
    }
    lua_setfield(L, -2, h);
    h = v + strlen(v) + 1;
  }
  lua_setfield(L, -2, "headers");

  lua_pushlstring(L, c->body.len ? nb_data(&c->body) : "", c->body.len);
  lua_setfield(L, -2, "body");
  lua_pushstring(L, c->remote);
  lua_setfield(L, -2, "remote");
  lua_pushinteger(L, c->remote_port);
  lua_setfield(L, -2, "remote_port");
  lua_pushinteger(L, c->id);
  lua_setfield(L, -2, "conn");
  lua_pushstring(L, c->http_minor >= 1 ? "1.1" : "1.0");
  lua_setfield(L, -2, "version");
  nb_clear(&c->url);
  nb_clear(&c->hdrs);
  nb_clear(&c->body);
}

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

/* Append "name: value\r\n" for one value (string or number) at idx. */
static const char *
add_header(lua_State *L, NbBuf *b, const char *name, size_t nlen, int idx)
{
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    return "header values must be strings or numbers";
  size_t vlen;
  const char *v = lua_tolstring(L, idx, &vlen);
  if (!is_field_value(v, vlen))
    return "a header value holds CR, LF or NUL";
  if (nb_add(b, name, nlen) != 0 || nb_add(b, ": ", 2) != 0
      || nb_add(b, v, vlen) != 0 || nb_add(b, "\r\n", 2) != 0)
    return "out of memory";
  return NULL;
}

/* Build the response from status, headers, body at idx .. idx+2 of L into
** b. Returns NULL or what is wrong with the handler's answer. */
static const char *
build_response(lua_State *L, Conn *c, int idx, NbBuf *b, int *close_it)
{
  int isnum = 0;
  lua_Integer status = lua_tointegerx(L, idx, &isnum);
  if (!isnum || status < 100 || status > 999)
    return "the status must be an integer from 100 to 999";
  if (!lua_isnoneornil(L, idx + 1) && !lua_istable(L, idx + 1))
    return "the headers must be a table";
  int bt = lua_type(L, idx + 2);
  if (bt != LUA_TNIL && bt != LUA_TNONE && bt != LUA_TSTRING)
    return "the body must be a string";
  size_t blen = 0;
  const char *body = bt == LUA_TSTRING ? lua_tolstring(L, idx + 2, &blen) : "";
  int bodyless = status < 200 || status == 204 || status == 304;
  if (bodyless)
    blen = 0;

  char line[128];
  const char *reason = http_status_str((enum http_status)status);
  if (strcmp(reason, "<unknown>") == 0)
    reason = "Status";
  int n = snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", (int)status, reason);
  if (nb_add(b, line, (size_t)n) != 0)
    return "out of memory";

  if (lua_istable(L, idx + 1)) {
    lua_pushnil(L);
    while (lua_next(L, idx + 1) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING) {
        lua_pop(L, 2);
        return "header names must be strings";
      }
      size_t nlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      if (!is_token(name, nlen)) {
        lua_pop(L, 2);
        return "a header name is not an HTTP token";
      }
      if (strcasecmp(name, "content-length") == 0
          || strcasecmp(name, "transfer-encoding") == 0) {
        lua_pop(L, 1);          /* set by the server */
        continue;
      }
      if (strcasecmp(name, "connection") == 0) {
        const char *v = lua_tostring(L, -1);
        if (v != NULL && strcasecmp(v, "close") == 0)
          *close_it = 1;
        lua_pop(L, 1);
        continue;
      }
      const char *err = NULL;
      if (lua_istable(L, -1)) {
        lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; err == NULL && i <= len; i++) {
          lua_geti(L, -1, i);
          err = add_header(L, b, name, nlen, lua_gettop(L));
          lua_pop(L, 1);
        }
      } else {
        err = add_header(L, b, name, nlen, lua_gettop(L));
      }
      lua_pop(L, 1);
      if (err != NULL) {
        lua_pop(L, 1);
        return err;
      }
    }
  }

  char date[64];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  n = snprintf(line, sizeof line, "Date: %s\r\n", date);
  if (nb_add(b, line, (size_t)n) != 0)
    return "out of memory";
  if (!bodyless) {
    n = snprintf(line, sizeof line, "Content-Length: %zu\r\n", blen);
    if (nb_add(b, line, (size_t)n) != 0)
      return "out of memory";
  }
  if (!c->keep_alive || *close_it) {
    if (buf_adds(b, "Connection: close\r\n") != 0)
      return "out of memory";
  } else if (c->http_minor == 0) {
    if (buf_adds(b, "Connection: keep-alive\r\n") != 0)
      return "out of memory";
  }
  if (nb_add(b, "\r\n", 2) != 0)
    return "out of memory";
  if (!c->is_head && nb_add(b, body, blen) != 0)
    return "out of memory";
  return NULL;
}

static void
report(const char *what, const char *detail)
{
  char msg[512];
  snprintf(msg, sizeof msg, "core.httpd: %s%s%s", what,
           detail ? ": " : "", detail ? detail : "");
  sb_report_error(msg);
}

/* The handler returned (results at idx .. idx+2 of L): queue its answer,
** drop the connection, or answer 500 when the answer is unusable. */
static void
respond(lua_State *L, Conn *c, int idx)
{
  if (!c->open)
    return;
  c->busy = 0;
  if (lua_isnoneornil(L, idx)) {        /* drop without an answer */
    conn_release(c);
    return;
  }
  NbBuf b = { NULL, 0, 0, 0 };
  int close_it = 0;
  const char *err = build_response(L, c, idx, &b, &close_it);
  if (err != NULL) {
    nb_free(&b);
    report("bad handler answer", err);
    conn_refuse(c, 500);
    return;
  }
  if (!c->keep_alive || close_it)
    c->close_after = 1;
  conn_write(c, nb_data(&b), b.len);
  nb_free(&b);
  if (!c->open)
    return;
  if (c->close_after) {
    ev_io_stop(sb_loop(), &c->rio);
    if (c->out.len == 0)
      conn_finish(c);
    return;
  }
  conn_process(L, c);
}

/* Stack of the coroutine: conn, traceback, then the handler's results or
** its error. */
static int
run_handler_k(lua_State *L, int status, lua_KContext ctx)
{
  (void)ctx;
  Conn *c = lua_touserdata(L, 1);
  if (status != LUA_OK && status != LUA_YIELD) {
    report("handler failed", lua_tostring(L, -1));
    if (c->open) {
      c->busy = 0;
      conn_refuse(c, 500);
    }
    return 0;
  }
  respond(L, c, 3);
  return 0;
}

/* The body of a handler's coroutine: (conn, handler, req). */
static int
run_handler(lua_State *L)
{
  lua_pushcfunction(L, sb_traceback);
  lua_insert(L, 2);
  return run_handler_k(L, lua_pcallk(L, 1, 3, 2, 0, run_handler_k), 0);
}

/* Spawn the handler for the request just parsed (L: the running thread). */
static void
dispatch(lua_State *L, Conn *c)
{
  c->busy = 1;
  c->ready = 0;
  c->srv->requests++;
  ev_timer_stop(sb_loop(), &c->timer);
  lua_checkstack(L, 8);
  lua_pushcfunction(L, run_handler);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->self_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->srv->handler_ref);
  push_request(L, c);
  sb_spawn(L, 3);
}

/* Parse what was received and run handlers, one request at a time, until
** a handler waits, the input runs out or the connection ends. */
static void
conn_process(lua_State *L, Conn *c)
{
  if (c->in_process || !c->open)
    return;
  c->in_process = 1;
  while (c->open && !c->busy && !c->close_after && !c->lingering
         && c->out.len < OUT_HIGH) {
    if (c->ready) {
      dispatch(L, c);
      continue;
    }
    if (c->in.len == 0)
      break;
    size_t len = c->in.len;
    size_t n = http_parser_execute(&c->parser, &parser_settings,
                                   nb_data(&c->in), len);
    if (!c->open)
      break;
    nb_consume(&c->in, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
      http_parser_pause(&c->parser, 0);
    } else if (e != HPE_OK) {
      int status = c->error ? c->error
                   : e == HPE_HEADER_OVERFLOW ? 431 : 400;
      conn_refuse(c, status);
      break;
    } else if (c->parser.upgrade && !c->ready) {
      conn_refuse(c, 400);
      break;
    }
  }
  c->in_process = 0;
  if (!c->open || c->lingering)
    return;
  struct ev_loop *loop = sb_loop();
  if (!c->busy && !c->ready && !c->close_after && c->out.len < OUT_HIGH)
    ev_io_start(loop, &c->rio);
  else
    ev_io_stop(loop, &c->rio);
  if (!c->busy && !c->close_after && c->idle_timeout > 0) {
    c->timer.repeat = c->idle_timeout;
    ev_timer_again(loop, &c->timer);
  }
}

static void
read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  (void)revents;
  Conn *c = w->data;
  sb_anchor(c->self_ref);
  if (c->lingering) {           /* discard until EOF or the timer */
    char sink[4096];
    ssize_t n;
    while ((n = recv(c->fd, sink, sizeof sink, 0)) > 0)
      ;
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
      conn_release(c);
    sb_unanchor();
    return;
  }
  int err;
  ssize_t n = nb_fill(&c->in, c->fd, &err);
  if (n > 0) {
    conn_process(sb_main(), c);
  } else if (n == 0) {          /* the client is done sending */
    conn_process(sb_main(), c);
    if (c->open && !c->lingering) {
      ev_io_stop(sb_loop(), &c->rio);
      if (c->busy || c->ready || c->out.len > 0)
        c->close_after = 1;
      else
        conn_release(c);
    }
  } else if (n == NB_NOMEM) {
    sb_report_error("core.httpd: out of memory reading a request");
    conn_release(c);
  } else if (n == NB_ERROR) {
    conn_release(c);
  }
  sb_unanchor();
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)revents;
  Conn *c = w->data;
  sb_anchor(c->self_ref);
  if (c->lingering || (!c->busy && c->out.len == 0))
    conn_release(c);            /* idle keep-alive or lingering close */
  else
    ev_timer_stop(loop, w);
  sb_unanchor();
}

/* }====================================================== */

/*
** {======================================================
** Server
** =======================================================
*/

static void
server_release(Server *s)
{
  if (s->ln.fd < 0)
    return;
  nb_listener_close(&s->ln);
  while (s->conns != NULL)
    conn_release(s->conns);
  sb_unref(&s->handler_ref);
  sb_unref(&s->self_ref);
}

static int
conn_gc(lua_State *L)
{
  conn_release(luaL_checkudata(L, 1, CONN_MT));
  return 0;
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)revents;
  Server *s = w->data;
  lua_State *L = sb_main();
  sb_anchor(s->self_ref);
  for (int i = 0; i < NB_ACCEPT_BATCH && s->ln.fd >= 0; i++) {
    struct sockaddr_storage ss;
    socklen_t slen = sizeof ss;
    int fd = nb_accept(&s->ln, (struct sockaddr *)&ss, &slen);
    if (fd == NB_RETRY)
      continue;
    if (fd < 0)
      break;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    lua_checkstack(L, 4);
    Conn *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    c->self_ref = LUA_NOREF;
    ev_io_init(&c->rio, read_cb, fd, EV_READ);
    ev_io_init(&c->wio, write_cb, fd, EV_WRITE);
    ev_init(&c->timer, timer_cb);
    c->rio.data = c->wio.data = c->timer.data = c;
    luaL_setmetatable(L, CONN_MT);
    c->fd = fd;
    c->open = 1;
    c->srv = s;
    c->id = ++s->accepted;
    c->max_body = s->max_body;
    c->idle_timeout = s->idle_timeout;
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      inet_ntop(AF_INET, &a->sin_addr, c->remote, sizeof c->remote);
      c->remote_port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      inet_ntop(AF_INET6, &a->sin6_addr, c->remote, sizeof c->remote);
      c->remote_port = ntohs(a->sin6_port);
    }
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = s->conns;
    if (s->conns != NULL)
      s->conns->prev = c;
    s->conns = c;
    s->active++;
    c->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    ev_io_start(loop, &c->rio);
    if (c->idle_timeout > 0) {
      c->timer.repeat = c->idle_timeout;
      ev_timer_again(loop, &c->timer);
    }
  }
  sb_unanchor();
}

static Server *
check_server(lua_State *L)
{
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  if (s->ln.fd < 0)
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
server_closed(lua_State *L)
{
  Server *s = luaL_checkudata(L, 1, SERVER_MT);
  lua_pushboolean(L, s->ln.fd < 0);
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
  if (s->ln.fd >= 0)
    lua_pushfstring(L, SERVER_MT " (port %d)", s->port);
  else
    lua_pushliteral(L, SERVER_MT " (closed)");
  return 1;
}

/* Optional field of the options table at 1. */
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
  lua_getfield(L, 1, "idle_timeout");
  double idle = luaL_optnumber(L, -1, DEFAULT_IDLE_TIMEOUT);
  lua_pop(L, 1);
  if (port < 0 || port > 65535)
    return luaL_error(L, "httpd.listen: port must be from 0 to 65535");
  if (max_body < 0)
    return luaL_error(L, "httpd.listen: max_body must not be negative");
  if (backlog <= 0 || backlog > 65535)
    return luaL_error(L, "httpd.listen: invalid backlog");
  if (lua_getfield(L, 1, "handler") != LUA_TFUNCTION)
    return luaL_error(L, "httpd.listen: handler must be a function");
  int hidx = lua_gettop(L);

  Server *s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  nb_listener_init(&s->ln, accept_cb, s, "core.httpd");
  s->handler_ref = s->self_ref = LUA_NOREF;
  s->max_body = (size_t)max_body;
  s->idle_timeout = idle > 0 ? idle : 0;
  luaL_setmetatable(L, SERVER_MT);

  char pstr[16];
  snprintf(pstr, sizeof pstr, "%d", (int)port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host, pstr, &hints, &res);
  if (gai != 0) {
    lua_pushnil(L);
    lua_pushfstring(L, "resolve %s: %s", host, gai_strerror(gai));
    return 2;
  }
  int err = 0;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0
        || listen(fd, (int)backlog) != 0) {
      err = errno;
      close(fd);
      continue;
    }
    s->ln.fd = fd;
    break;
  }
  freeaddrinfo(res);
  if (s->ln.fd < 0)
    return sb_push_errno(L, "bind", err ? err : EADDRNOTAVAIL);

  struct sockaddr_storage ss;
  socklen_t slen = sizeof ss;
  if (getsockname(s->ln.fd, (struct sockaddr *)&ss, &slen) == 0) {
    if (ss.ss_family == AF_INET)
      s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
      s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  lua_pushvalue(L, hidx);
  s->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  s->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  nb_listener_start(&s->ln);
  return 1;
}

/* }====================================================== */

static const luaL_Reg httpd_funcs[] = {
  { "listen", l_listen },
  { NULL, NULL }
};

static const luaL_Reg server_meth[] = {
  { "port", server_port },
  { "close", server_close },
  { "closed", server_closed },
  { "stats", server_stats },
  { NULL, NULL }
};

int
luaopen_core_httpd(lua_State *L)
{
  if (luaL_newmetatable(L, SERVER_MT)) {
    lua_newtable(L);
    luaL_setfuncs(L, server_meth, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, server_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, server_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, server_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, CONN_MT)) {
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, httpd_funcs);
  return 1;
}
