/*
** http.c -- core.http: HTTP(S) client requests on libcurl's multi socket
** API, driven by libev.
**
** One multi handle for the process (connections and DNS results are
** reused across requests). curl tells us which sockets to watch
** (CURLMOPT_SOCKETFUNCTION -> one ev_io per socket) and when to call it
** back (CURLMOPT_TIMERFUNCTION -> one ev_timer); the watchers call
** curl_multi_socket_action, then every finished transfer resumes its
** coroutine with the response (cosocket model, see core.h).
**
** A request is a userdata ("core.http.Request") kept as a to-be-closed
** slot in the frame of the waiting http.request call: when the call
** returns (after the resume) or the coroutine is closed or collected,
** its close function detaches the transfer and frees everything. The
** module state is a userdata in the registry whose __gc tears down the
** multi handle, so lua_close leaves nothing behind.
*/
#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core.h"
#include "netbuf.h"

#define REQUEST_MT  "core.http.Request"
#define URL_MT      "core.http.Url"
#define STATE_MT    "core.http.State"
#define STATE_KEY   "core.http.state"

#define USER_AGENT  "switchboard/0.1"
#define POOL_MAX    8                        /* idle easy handles kept */
/* Idle connections the multi handle keeps for reuse. libcurl's default
** cache holds 4 per easy handle in the multi at that moment, so when a
** burst ends and only a few transfers are left, it closes most of the
** connections the burst opened and the next burst opens them again. */
#define MAX_CONNECTS 256
#define DEFAULT_TIMEOUT          30.0
#define DEFAULT_CONNECT_TIMEOUT  10.0
#define DEFAULT_MAX_BYTES        (8u * 1024u * 1024u)
#define MAX_HEAD_BYTES           (256u * 1024u)
#define MAX_CRED_BYTES           4096u       /* name + secret of opts.auth */

/* {====================================================================
** Module state
** ===================================================================== */

typedef struct Request {
  CURL *easy;                   /* NULL when not holding a handle */
  int co_ref;                   /* pinned coroutine, or LUA_NOREF */
  int in_multi;                 /* added to the multi handle */
  int too_large;                /* the write callback hit max_bytes */
  int oom;                      /* a callback ran out of memory */
  size_t max_bytes;
  struct curl_slist *headers;
  struct AuthHeader *auth;      /* opts.auth's header, in locked memory */
  NbBuf body;                   /* response body */
  NbBuf head;                   /* header lines of the last response */
  /* outcome, filled when the transfer is done */
  CURLcode code;
  long status;
  double time;
  int sent;
  struct Request *prev, *next;  /* the in-flight list */
} Request;

typedef struct Sock {
  ev_io io;
  curl_socket_t fd;
  struct Sock *prev, *next;
} Sock;

static struct {
  int alive;
  CURLM *multi;
  ev_timer timer;
  Request *inflight;
  Sock *socks;
  CURL *pool[POOL_MAX];
  int npool;
  lua_Integer active, total;
} S;

static void
sock_unlink(Sock *s)
{
  if (s->prev)
    s->prev->next = s->next;
  else
    S.socks = s->next;
  if (s->next)
    s->next->prev = s->prev;
  s->prev = s->next = NULL;
}

static void
req_unlink(Request *r)
{
  if (r->prev)
    r->prev->next = r->next;
  else
    S.inflight = r->next;
  if (r->next)
    r->next->prev = r->prev;
  r->prev = r->next = NULL;
}

/* An easy handle from the idle pool, or a new one. */
static CURL *
easy_get(void)
{
  if (S.npool > 0)
    return S.pool[--S.npool];
  return curl_easy_init();
}

/* Give an easy handle back (reset, so no option or credential of the
** last request survives), or clean it up when the pool is full. */
static void
easy_put(CURL *e)
{
  if (S.alive && S.npool < POOL_MAX) {
    curl_easy_reset(e);
    S.pool[S.npool++] = e;
  } else {
    curl_easy_cleanup(e);
  }
}

/* {====================================================================
** Memory that held a secret
**
** libcurl copies what it sends: the request head, with its Authorization
** line, is built in a buffer of its own and freed after the send. So that
** no freed block keeps a copy, libcurl allocates through the functions
** below (curl_global_init_mem), which remember each block's size and wipe
** it before giving it back. The credential's header itself (Basic, Bearer
** or a named key header) is built from the credential handle in a page of its own (sb_secure_alloc: mlock'd,
** MADV_DONTDUMP, wiped when the transfer ends) and handed to libcurl as a list
** node that lives in that page, so libcurl holds no other copy of it.
** ===================================================================== */

typedef union {
  max_align_t align;
  size_t size;
} BlockHead;

static void *
wipe_malloc(size_t n)
{
  if (n > SIZE_MAX - sizeof(BlockHead))
    return NULL;
  BlockHead *h = malloc(sizeof *h + n);
  if (h == NULL)
    return NULL;
  h->size = n;
  return h + 1;
}

static void
wipe_free(void *p)
{
  if (p == NULL)
    return;
  BlockHead *h = (BlockHead *)p - 1;
  OPENSSL_cleanse(h, sizeof *h + h->size);
  free(h);
}

/* Never realloc in place: the old block is wiped before it is freed. */
static void *
wipe_realloc(void *p, size_t n)
{
  if (p == NULL)
    return wipe_malloc(n);
  BlockHead *h = (BlockHead *)p - 1;
  if (n <= h->size) {
    OPENSSL_cleanse((char *)p + n, h->size - n);
    h->size = n;
    return p;
  }
  void *q = wipe_malloc(n);
  if (q == NULL)
    return NULL;
  memcpy(q, p, h->size);
  wipe_free(p);
  return q;
}

static char *
wipe_strdup(const char *s)
{
  size_t n = strlen(s) + 1;
  char *p = wipe_malloc(n);
  if (p != NULL)
    memcpy(p, s, n);
  return p;
}

static void *
wipe_calloc(size_t nmemb, size_t size)
{
  if (size != 0 && nmemb > SIZE_MAX / size)
    return NULL;
  void *p = wipe_malloc(nmemb * size);
  if (p != NULL)
    memset(p, 0, nmemb * size);
  return p;
}

typedef struct AuthHeader {
  struct curl_slist node;       /* node.data points at line */
  size_t maplen;
  char line[];                  /* "Authorization: Basic …", "Name: secret" */
} AuthHeader;

#define BASIC_PREFIX "Authorization: Basic "
#define BEARER_PREFIX "Authorization: Bearer "

/* The credential's header line, in a locked page of its own; NULL when
** out of memory. Basic: the Base64 of "user:secret", built after the line
** in the same page and wiped once encoded; bearer and header: the secret
** as is (vault.c checked it is a header value). */
static AuthHeader *
auth_new(const SbCredential *c)
{
  size_t plain = c->kind == SB_CRED_BASIC ? c->nlen + 1 + c->slen : 0;
  size_t b64 = 4 * ((plain + 2) / 3);
  size_t need = sizeof(AuthHeader) + sizeof BEARER_PREFIX + c->nlen + 2
                + c->slen + b64 + plain + 1;
  size_t maplen = 0;
  unsigned char *m = sb_secure_alloc(need, &maplen);
  if (m == NULL)
    return NULL;
  AuthHeader *a = (AuthHeader *)m;
  a->maplen = maplen;
  char *p = a->line;
  if (c->kind == SB_CRED_BASIC) {
    memcpy(p, BASIC_PREFIX, sizeof BASIC_PREFIX - 1);
    unsigned char *tmp = (unsigned char *)p + sizeof BASIC_PREFIX + b64;
    memcpy(tmp, c->name, c->nlen);
    tmp[c->nlen] = ':';
    memcpy(tmp + c->nlen + 1, c->secret, c->slen);
    EVP_EncodeBlock((unsigned char *)p + sizeof BASIC_PREFIX - 1, tmp,
                    (int)plain);
    OPENSSL_cleanse(tmp, plain);
  } else {
    if (c->kind == SB_CRED_BEARER) {
      memcpy(p, BEARER_PREFIX, sizeof BEARER_PREFIX - 1);
      p += sizeof BEARER_PREFIX - 1;
    } else {
      memcpy(p, c->name, c->nlen);
      memcpy(p + c->nlen, ": ", 2);
      p += c->nlen + 2;
    }
    memcpy(p, c->secret, c->slen);
    p[c->slen] = '\0';
  }
  a->node.data = a->line;
  a->node.next = NULL;
  return a;
}

static void
auth_free(AuthHeader *a)
{
  if (a == NULL)
    return;
  sb_secure_free((unsigned char *)a, a->maplen);
}

/* Free a header list, its strings wiped first (a caller's header may hold
** a token). */
static void
slist_wipe_free(struct curl_slist *l)
{
  for (struct curl_slist *p = l; p != NULL; p = p->next)
    OPENSSL_cleanse(p->data, strlen(p->data));
  curl_slist_free_all(l);
}

/* The headers of r, once its easy handle no longer points at them. */
static void
req_drop_headers(Request *r)
{
  if (r->headers != NULL) {
    slist_wipe_free(r->headers);
    r->headers = NULL;
  }
  auth_free(r->auth);
  r->auth = NULL;
}

/* }==================================================================== */

/* Detach r from curl and free what it holds. Idempotent; the Lua side
** (the coroutine pin) is dropped by the caller when L is given. */
static void
req_release(lua_State *L, Request *r)
{
  if (r->in_multi) {
    r->in_multi = 0;
    req_unlink(r);
    S.active--;
    if (S.alive)
      curl_multi_remove_handle(S.multi, r->easy);
  }
  if (r->easy != NULL) {
    easy_put(r->easy);
    r->easy = NULL;
  }
  req_drop_headers(r);
  nb_free(&r->body);
  nb_free(&r->head);
  if (L != NULL && r->co_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->co_ref);
    r->co_ref = LUA_NOREF;
  }
}

/* }==================================================================== */

/* {====================================================================
** libcurl <-> libev
** ===================================================================== */

static void check_done(void);

static void
io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  Sock *s = (Sock *)w->data;
  int flags = 0, running = 0;
  if (revents & EV_READ)
    flags |= CURL_CSELECT_IN;
  if (revents & EV_WRITE)
    flags |= CURL_CSELECT_OUT;
  if (revents & EV_ERROR)
    flags |= CURL_CSELECT_ERR;
  curl_multi_socket_action(S.multi, s->fd, flags, &running);
  check_done();
}

static void
timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)loop;
  (void)w;
  (void)revents;
  int running = 0;
  curl_multi_socket_action(S.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl asks. */
static int
socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
  (void)easy;
  (void)userp;
  struct ev_loop *loop = sb_loop();
  Sock *s = (Sock *)sockp;
  if (what == CURL_POLL_REMOVE) {
    if (s != NULL) {
      ev_io_stop(loop, &s->io);
      sock_unlink(s);
      free(s);
      curl_multi_assign(S.multi, fd, NULL);
    }
    return 0;
  }
  int events = 0;
  if (what & CURL_POLL_IN)
    events |= EV_READ;
  if (what & CURL_POLL_OUT)
    events |= EV_WRITE;
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL)
      return -1;                /* curl fails the transfer */
    s->fd = fd;
    s->next = S.socks;
    if (S.socks)
      S.socks->prev = s;
    S.socks = s;
    ev_io_init(&s->io, io_cb, fd, events);
    s->io.data = s;
    curl_multi_assign(S.multi, fd, s);
  } else {
    ev_io_stop(loop, &s->io);
    ev_io_set(&s->io, fd, events);
  }
  ev_io_start(loop, &s->io);
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: (re)arm or stop the one timer. Calling
** curl_multi_socket_action from here is not allowed, so even a 0 ms
** timeout goes through the loop. */
static int
timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
  (void)multi;
  (void)userp;
  struct ev_loop *loop = sb_loop();
  ev_timer_stop(loop, &S.timer);
  if (timeout_ms >= 0) {
    ev_timer_set(&S.timer, (double)timeout_ms / 1000.0, 0.);
    ev_timer_start(loop, &S.timer);
  }
  return 0;
}

/* CURLOPT_WRITEFUNCTION: collect the body, up to max_bytes. A short
** count aborts the transfer (CURLE_WRITE_ERROR). */
static size_t
write_fn(char *ptr, size_t size, size_t nmemb, void *ud)
{
  Request *r = (Request *)ud;
  size_t n = size * nmemb;
  if (n > r->max_bytes - r->body.len) {
    r->too_large = 1;
    return 0;
  }
  if (nb_add(&r->body, ptr, n) != 0) {
    r->oom = 1;
    return 0;
  }
  return n;
}

/* CURLOPT_HEADERFUNCTION: keep the header lines of the last response
** (a status line starts a new response: 100 Continue, 1xx, …). */
static size_t
header_fn(char *ptr, size_t size, size_t nmemb, void *ud)
{
  Request *r = (Request *)ud;
  size_t n = size * nmemb;
  if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0)
    nb_clear(&r->head);
  if (n > MAX_HEAD_BYTES - r->head.len) {
    r->too_large = 1;
    return 0;
  }
  if (nb_add(&r->head, ptr, n) != 0) {
    r->oom = 1;
    return 0;
  }
  return n;
}

/* Results of a finished request, pushed on the waiting coroutine. */
static int push_result(lua_State *co, void *ud);

/* Drain curl's messages: every finished transfer gives its easy handle
** back and resumes its coroutine. */
static void
check_done(void)
{
  CURLMsg *msg;
  int left;
  while (S.alive && (msg = curl_multi_info_read(S.multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    CURL *e = msg->easy_handle;
    CURLcode code = msg->data.result;
    Request *r = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&r);
    if (r == NULL || r->easy != e) {        /* not ours: cannot happen */
      curl_multi_remove_handle(S.multi, e);
      continue;
    }
    r->code = code;
    long status = 0, reqsize = 0;
    double total = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &reqsize);
    curl_easy_getinfo(e, CURLINFO_TOTAL_TIME, &total);
    r->status = status;
    r->time = total;
    switch (code) {
      case CURLE_COULDNT_RESOLVE_HOST:
      case CURLE_COULDNT_RESOLVE_PROXY:
      case CURLE_COULDNT_CONNECT:
      case CURLE_SSL_CONNECT_ERROR:
      case CURLE_PEER_FAILED_VERIFICATION:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_URL_MALFORMAT:
      case CURLE_UNSUPPORTED_PROTOCOL:
        r->sent = 0;
        break;
      case CURLE_GOT_NOTHING:
      case CURLE_RECV_ERROR:
      case CURLE_PARTIAL_FILE:
      case CURLE_WRITE_ERROR:
      case CURLE_FILESIZE_EXCEEDED:
        r->sent = 1;
        break;
      default:      /* timeouts, send errors…: once a byte went out */
        r->sent = reqsize > 0 || status > 0;
        break;
    }
    /* the handle goes back now; the buffers stay until the close */
    r->in_multi = 0;
    req_unlink(r);
    S.active--;
    curl_multi_remove_handle(S.multi, e);
    r->easy = NULL;
    easy_put(e);
    req_drop_headers(r);
    int ref = r->co_ref;
    r->co_ref = LUA_NOREF;
    /* r stays valid during the resume: it is on the coroutine's stack,
    ** and is closed when http.request returns there */
    sb_resume_ref(ref, push_result, r);
  }
}

/* }==================================================================== */

/* {====================================================================
** Results
** ===================================================================== */

static const char *
error_text(const Request *r)
{
  if (r->too_large)
    return "response too large";
  if (r->oom)
    return "out of memory";
  switch (r->code) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST: return "could not resolve host";
    case CURLE_COULDNT_CONNECT: return "could not connect";
    case CURLE_PEER_FAILED_VERIFICATION:
      return "tls certificate verification failed";
    case CURLE_SSL_CACERT_BADFILE: return "cannot read the ca file";
    case CURLE_SSL_CONNECT_ERROR: return "tls handshake failed";
    case CURLE_GOT_NOTHING: return "empty reply from server";
    case CURLE_RECV_ERROR: return "connection reset while receiving";
    case CURLE_SEND_ERROR: return "connection reset while sending";
    case CURLE_PARTIAL_FILE: return "response truncated";
    case CURLE_FILESIZE_EXCEEDED: return "response too large";
    case CURLE_URL_MALFORMAT: return "invalid url";
    case CURLE_UNSUPPORTED_PROTOCOL: return "unsupported url scheme";
    case CURLE_WEIRD_SERVER_REPLY: return "invalid response from server";
    case CURLE_OUT_OF_MEMORY: return "out of memory";
    default: return NULL;
  }
}

/* [-0, +1, m] headers table from the raw header lines. */
static void
push_headers(lua_State *co, const NbBuf *h)
{
  lua_newtable(co);
  const char *p = nb_data(h);
  if (p == NULL)
    return;
  const char *end = p + h->len;
  char name[256];
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    const char *le = eol ? eol : end;
    if (le > p && le[-1] == '\r')
      le--;
    const char *colon = memchr(p, ':', (size_t)(le - p));
    if (colon != NULL && colon > p && *p != ' ' && *p != '\t'
        && (size_t)(colon - p) < sizeof name) {
      size_t nlen = (size_t)(colon - p);
      for (size_t i = 0; i < nlen; i++)
        name[i] = (char)tolower((unsigned char)p[i]);
      const char *v = colon + 1;
      while (v < le && (*v == ' ' || *v == '\t'))
        v++;
      const char *ve = le;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
        ve--;
      lua_pushlstring(co, name, nlen);
      lua_pushlstring(co, v, (size_t)(ve - v));
      lua_rawset(co, -3);                 /* last value wins */
    }
    p = next;
  }
}

static int
push_result(lua_State *co, void *ud)
{
  Request *r = (Request *)ud;
  if (!lua_checkstack(co, 8))
    return 0;
  if (r->code == CURLE_OK && !r->too_large && !r->oom) {
    lua_createtable(co, 0, 4);
    lua_pushinteger(co, (lua_Integer)r->status);
    lua_setfield(co, -2, "status");
    push_headers(co, &r->head);
    lua_setfield(co, -2, "headers");
    lua_pushlstring(co, r->body.len ? nb_data(&r->body) : "", r->body.len);
    lua_setfield(co, -2, "body");
    lua_pushnumber(co, (lua_Number)r->time);
    lua_setfield(co, -2, "time");
    return 1;
  }
  lua_pushnil(co);
  const char *text = error_text(r);
  if (text != NULL) {
    lua_pushstring(co, text);
  } else {
    /* curl's generic text, lowercased (it names no URL nor secret) */
    const char *s = curl_easy_strerror(r->code);
    luaL_Buffer b;
    luaL_buffinit(co, &b);
    for (; *s; s++)
      luaL_addchar(&b, (char)tolower((unsigned char)*s));
    luaL_pushresult(&b);
  }
  lua_createtable(co, 0, 2);
  lua_pushboolean(co, r->sent);
  lua_setfield(co, -2, "sent");
  lua_pushinteger(co, (lua_Integer)r->code);
  lua_setfield(co, -2, "code");
  return 3;
}

/* }==================================================================== */

/* {====================================================================
** Options
** ===================================================================== */

/* [-0, +1, e] The string form of a query/form value at idx. */
static const char *
value_string(lua_State *L, int idx, const char *opt, const char *key,
             size_t *len)
{
  switch (lua_type(L, idx)) {
    case LUA_TSTRING:
      lua_pushvalue(L, idx);
      return lua_tolstring(L, -1, len);
    case LUA_TNUMBER: {
      /* an integral float is written as an integer: 5.0 is "5", never
      ** "5.0" (JSON decoders give floats) */
      lua_Integer i;
      if (lua_isinteger(L, idx)) {
        lua_pushvalue(L, idx);
      } else {
        lua_Number n = lua_tonumber(L, idx);
        if (!isfinite(n))
          luaL_error(L, "opts.%s.%s: not a finite number", opt, key);
        if (floor(n) == n && lua_numbertointeger(n, &i))
          lua_pushinteger(L, i);
        else
          lua_pushvalue(L, idx);
      }
      return lua_tolstring(L, -1, len);
    }
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, idx) ? "true" : "false");
      return lua_tolstring(L, -1, len);
    default:
      luaL_error(L, "opts.%s.%s: expected a string, number, boolean or "
                 "an array of them, got %s", opt, key,
                 luaL_typename(L, idx));
      return NULL;
  }
}

static int
key_cmp(const void *a, const void *b)
{
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* [-0, +1, e] curl_easy_escape of the string at idx, as a Lua string.
** The Lua side is allocated first (at most 3 bytes per byte), so nothing
** that can raise runs while curl's copy is held. */
static void
push_escaped(lua_State *L, CURL *e, int idx)
{
  idx = lua_absindex(L, idx);
  size_t len;
  const char *s = lua_tolstring(L, idx, &len);
  if (len > (size_t)0x7fffffff / 3)
    luaL_error(L, "value too long");
  luaL_Buffer b;
  char *dst = luaL_buffinitsize(L, &b, 3 * len + 1);
  char *esc = curl_easy_escape(e, s, (int)len);
  if (esc == NULL)
    luaL_error(L, "not enough memory");
  size_t n = strlen(esc);
  if (n > 3 * len) {                    /* cannot happen */
    curl_free(esc);
    luaL_error(L, "escape overflow");
  }
  memcpy(dst, esc, n);
  curl_free(esc);
  luaL_pushresultsize(&b, n);
}

/* [-0, +1, e] "k=v&k=v…" from the table at idx (opts[opt]), every key
** and value escaped by curl_easy_escape; keys in sorted order (a
** reproducible encoding), an array value as repeated keys. Pushes ""
** for an empty table. */
static void
push_encoded(lua_State *L, CURL *e, int idx, const char *opt)
{
  idx = lua_absindex(L, idx);
  int base = lua_gettop(L);
  int nkeys = 0;
  lua_newtable(L);                        /* base+1: the keys */
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "opts.%s: keys must be strings", opt);
    lua_pushvalue(L, -1);
    lua_rawseti(L, base + 1, ++nkeys);
  }
  const char **names = (const char **)lua_newuserdatauv(     /* base+2 */
      L, sizeof(char *) * (size_t)(nkeys ? nkeys : 1), 0);
  for (int i = 0; i < nkeys; i++) {
    lua_rawgeti(L, base + 1, i + 1);
    names[i] = lua_tostring(L, -1);       /* anchored in the keys table */
    lua_pop(L, 1);
  }
  qsort(names, (size_t)nkeys, sizeof *names, key_cmp);

  lua_newtable(L);                        /* base+3: the pieces */
  int npieces = 0;
  for (int i = 0; i < nkeys; i++) {
    lua_getfield(L, idx, names[i]);       /* base+4: the value */
    lua_Integer n = 1;
    int is_array = lua_type(L, base + 4) == LUA_TTABLE;
    if (is_array)
      n = (lua_Integer)lua_rawlen(L, base + 4);
    lua_pushstring(L, names[i]);
    push_escaped(L, e, -1);               /* base+6: the escaped key */
    for (lua_Integer j = 1; j <= n; j++) {
      if (is_array)
        lua_rawgeti(L, base + 4, j);
      else
        lua_pushvalue(L, base + 4);
      size_t vlen;
      value_string(L, -1, opt, names[i], &vlen);
      push_escaped(L, e, -1);
      lua_pushfstring(L, "%s%s=%s", npieces ? "&" : "",
                      lua_tostring(L, base + 6), lua_tostring(L, -1));
      lua_rawseti(L, base + 3, ++npieces);
      lua_settop(L, base + 6);
    }
    lua_settop(L, base + 3);
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= npieces; i++) {
    lua_rawgeti(L, base + 3, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  lua_replace(L, base + 1);
  lua_settop(L, base + 1);
}

/* Append a header line "Name: value" (no CR/LF, token name). */
static void
add_header(lua_State *L, Request *r, const char *name, const char *value)
{
  for (const char *p = name; *p; p++)
    if (!(isalnum((unsigned char)*p) || strchr("!#$%&'*+-.^_`|~", *p)))
      luaL_error(L, "opts.headers: invalid header name '%s'", name);
  if (name[0] == '\0')
    luaL_error(L, "opts.headers: empty header name");
  if (strpbrk(value, "\r\n") != NULL)
    luaL_error(L, "opts.headers: invalid value for header '%s'", name);
  /* "Name;" sends an empty header (curl drops "Name:") */
  const char *line = value[0] ? lua_pushfstring(L, "%s: %s", name, value)
                              : lua_pushfstring(L, "%s;", name);
  struct curl_slist *l = curl_slist_append(r->headers, line);
  lua_pop(L, 1);
  if (l == NULL)
    luaL_error(L, "not enough memory");
  r->headers = l;
}

static int
has_header(lua_State *L, int headers, const char *name)
{
  if (headers == 0)
    return 0;
  lua_pushnil(L);
  while (lua_next(L, headers) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING
        && strcasecmp(lua_tostring(L, -1), name) == 0) {
      lua_pop(L, 1);
      return 1;
    }
  }
  return 0;
}

static double
opt_seconds(lua_State *L, const char *name, double def)
{
  double v = def;
  if (lua_getfield(L, 1, name) != LUA_TNIL) {
    if (!lua_isnumber(L, -1))
      luaL_error(L, "opts.%s: expected a number of seconds", name);
    v = (double)lua_tonumber(L, -1);
    if (!(v > 0 && v < 1e7))
      luaL_error(L, "opts.%s: must be positive", name);
  }
  lua_pop(L, 1);
  return v;
}

/* Check opts.auth (at idx): an open core.vault.Credential. */
static void
check_auth(lua_State *L, int idx, SbCredential *c)
{
  if (!sb_credential(L, idx, c))
    luaL_error(L, "opts.auth: expected an open core.vault.Credential");
  if (c->nlen > MAX_CRED_BYTES || c->slen > MAX_CRED_BYTES - c->nlen)
    luaL_error(L, "opts.auth: credential too long");
}

/* The credential's header line: r's own (see auth_new), first in the
** header list. Nothing below raises but the out-of-memory error, after
** which r's close frees what was made. */
static void
set_auth(lua_State *L, Request *r, const SbCredential *c)
{
  r->auth = auth_new(c);
  if (r->auth == NULL)
    luaL_error(L, "not enough memory");
  r->auth->node.next = r->headers;
}

/* }==================================================================== */

/* {====================================================================
** http.request, http.stats
** ===================================================================== */

static int
req_close(lua_State *L)
{
  Request *r = (Request *)luaL_checkudata(L, 1, REQUEST_MT);
  req_release(L, r);
  return 0;
}

static int
http_request(lua_State *L)
{
  sb_check_yieldable(L, "http.request");
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (!S.alive)
    luaL_error(L, "core.http is shut down");

  /* plain options first: misuse raises before anything is acquired */
  if (lua_getfield(L, 1, "url") != LUA_TSTRING)
    luaL_error(L, "opts.url: expected a string");
  size_t url_len;
  const char *url_s = lua_tolstring(L, -1, &url_len);
  if (strlen(url_s) != url_len)
    luaL_error(L, "opts.url: contains a zero byte");
  int url = lua_gettop(L);                                    /* 2 */
  const char *method = "GET";
  if (lua_getfield(L, 1, "method") != LUA_TNIL) {             /* 3 */
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_error(L, "opts.method: expected a string");
    method = lua_tostring(L, -1);
    size_t n = strlen(method);
    if (n == 0 || n > 16)
      luaL_error(L, "opts.method: invalid method");
    for (size_t i = 0; i < n; i++)
      if (!isupper((unsigned char)method[i]))
        luaL_error(L, "opts.method: invalid method '%s'", method);
  }
  int query = lua_getfield(L, 1, "query") == LUA_TNIL ? 0 : 4; /* 4 */
  if (query && !lua_istable(L, query))
    luaL_error(L, "opts.query: expected a table");
  int form = lua_getfield(L, 1, "form") == LUA_TNIL ? 0 : 5;   /* 5 */
  if (form && !lua_istable(L, form))
    luaL_error(L, "opts.form: expected a table");
  int body = lua_getfield(L, 1, "body") == LUA_TNIL ? 0 : 6;   /* 6 */
  if (body && lua_type(L, body) != LUA_TSTRING)
    luaL_error(L, "opts.body: expected a string");
  if (body && form)
    luaL_error(L, "opts.body and opts.form are exclusive");
  int headers = lua_getfield(L, 1, "headers") == LUA_TNIL ? 0 : 7; /* 7 */
  if (headers && !lua_istable(L, headers))
    luaL_error(L, "opts.headers: expected a table");
  int ca = lua_getfield(L, 1, "ca_file") == LUA_TNIL ? 0 : 8;  /* 8 */
  if (ca && lua_type(L, ca) != LUA_TSTRING)
    luaL_error(L, "opts.ca_file: expected a string");
  int auth = lua_getfield(L, 1, "auth") == LUA_TNIL ? 0 : 9;   /* 9 */
  SbCredential cred;
  memset(&cred, 0, sizeof cred);
  if (auth)
    check_auth(L, auth, &cred);
  double timeout = opt_seconds(L, "timeout", DEFAULT_TIMEOUT);
  double ctimeout = opt_seconds(L, "connect_timeout",
                                DEFAULT_CONNECT_TIMEOUT);
  size_t max_bytes = DEFAULT_MAX_BYTES;
  if (lua_getfield(L, 1, "max_bytes") != LUA_TNIL) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
      luaL_error(L, "opts.max_bytes: expected a non-negative integer");
    max_bytes = (size_t)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);

  /* the request, closed until it holds a handle; a to-be-closed slot,
  ** so every way out of this call (error, return, resume, coroutine
  ** close) releases it */
  Request *r = (Request *)lua_newuserdatauv(L, sizeof *r, 0);   /* 10 */
  memset(r, 0, sizeof *r);
  r->co_ref = LUA_NOREF;
  r->max_bytes = max_bytes;
  luaL_setmetatable(L, REQUEST_MT);
  lua_toclose(L, -1);
  int top = lua_gettop(L);

  r->easy = easy_get();
  if (r->easy == NULL)
    luaL_error(L, "not enough memory");
  CURL *e = r->easy;

  /* the URL, with the query appended (escaped by curl_easy_escape; not
  ** through CURLUPART_QUERY, which lowercases %XX in libcurl 7.88), then
  ** checked by libcurl's URL API. Strings first: nothing below raises
  ** while u is held. */
  if (query) {
    push_encoded(L, e, query, "query");
    if (lua_rawlen(L, -1) > 0) {
      size_t ulen;
      const char *us = lua_tolstring(L, url, &ulen);
      const char *hash = memchr(us, '#', ulen);
      size_t blen = hash ? (size_t)(hash - us) : ulen;   /* no fragment */
      const char *sep = "?";
      if (memchr(us, '?', blen) != NULL)
        sep = (us[blen - 1] == '?' || us[blen - 1] == '&') ? "" : "&";
      lua_pushlstring(L, us, blen);
      lua_pushstring(L, sep);
      lua_rotate(L, -3, -1);              /* base, sep, query */
      lua_concat(L, 3);
      lua_replace(L, url);
    } else {
      lua_pop(L, 1);
    }
  }
  CURLU *u = curl_url();
  if (u == NULL)
    luaL_error(L, "not enough memory");
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, lua_tostring(L, url), 0);
  char *scheme = NULL;
  if (uc == CURLUE_OK)
    uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  int okscheme = scheme != NULL && (strcmp(scheme, "http") == 0
                                    || strcmp(scheme, "https") == 0);
  curl_free(scheme);
  if (uc != CURLUE_OK || !okscheme) {
    curl_url_cleanup(u);
    lua_pushnil(L);
    lua_pushstring(L, uc != CURLUE_OK ? "invalid url"
                                      : "unsupported url scheme");
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "sent");
    lua_pushinteger(L, CURLE_URL_MALFORMAT);
    lua_setfield(L, -2, "code");
    return 3;
  }
  char *full = NULL;
  if (uc == CURLUE_OK)
    uc = curl_url_get(u, CURLUPART_URL, &full, 0);
  curl_url_cleanup(u);
  if (uc != CURLUE_OK) {
    curl_free(full);
    luaL_error(L, "not enough memory");
  }
  CURLcode cc = curl_easy_setopt(e, CURLOPT_URL, full);
  curl_free(full);
  if (cc != CURLE_OK)
    luaL_error(L, "not enough memory");

  /* method and body */
  if (form) {
    push_encoded(L, e, form, "form");
    body = lua_gettop(L);
  }
  if (body) {
    size_t blen;
    const char *b = lua_tolstring(L, body, &blen);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, b) != CURLE_OK)
      luaL_error(L, "not enough memory");
    if (strcmp(method, "POST") != 0)
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  } else if (strcmp(method, "GET") == 0) {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (strcmp(method, "POST") == 0) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
  } else {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  }
  /* libcurl quietly resends a request whose reused connection turns out to
  ** be closed before any answer. For a method that is not idempotent (a
  ** POST that sends a message) that could send twice, so such a request
  ** gets a connection of its own. */
  if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0
      && strcmp(method, "PUT") != 0 && strcmp(method, "DELETE") != 0
      && strcmp(method, "OPTIONS") != 0)
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);

  /* headers: the caller's, then the defaults they did not set */
  if (headers) {
    lua_pushnil(L);
    while (lua_next(L, headers) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "opts.headers: names must be strings");
      if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "opts.headers: value of '%s' must be a string",
                   lua_tostring(L, -2));
      lua_pushvalue(L, -1);
      add_header(L, r, lua_tostring(L, -3), lua_tostring(L, -1));
      lua_pop(L, 2);
    }
  }
  if (form && !has_header(L, headers, "Content-Type"))
    add_header(L, r, "Content-Type", "application/x-www-form-urlencoded");
  if (!has_header(L, headers, "Expect")) {
    /* "Expect:" removes curl's 100-continue (a round trip for large
    ** bodies) */
    struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
    if (l == NULL)
      luaL_error(L, "not enough memory");
    r->headers = l;
  }
  if (auth) {
    const char *aname = cred.kind == SB_CRED_HEADER ? cred.name
                                                    : "Authorization";
    if (has_header(L, headers, aname))
      luaL_error(L, "opts.headers: %s cannot be combined with opts.auth",
                 aname);
    set_auth(L, r, &cred);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, &r->auth->node);
  } else if (r->headers != NULL) {
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  }
  if (ca && curl_easy_setopt(e, CURLOPT_CAINFO, lua_tostring(L, ca))
                != CURLE_OK)
    luaL_error(L, "not enough memory");

  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, USER_AGENT);
  /* at least 1 ms: 0 would mean no timeout at all */
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000.0) + 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   (long)(ctimeout * 1000.0) + 1L);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_bytes);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_fn);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_fn);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);

  if (curl_multi_add_handle(S.multi, e) != CURLM_OK)
    luaL_error(L, "cannot start the request");
  r->in_multi = 1;
  r->next = S.inflight;
  if (S.inflight)
    S.inflight->prev = r;
  S.inflight = r;
  S.active++;
  S.total++;
  lua_settop(L, top);                     /* the request stays pinned */
  r->co_ref = sb_pin(L);
  return lua_yield(L, 0);
}

/* {====================================================================
** http.parse, http.resolve: libcurl's URL parser (curl_url)
** ===================================================================== */

enum { U_URL, U_SCHEME, U_HOST, U_PORT, U_PATH, U_QUERY, U_FRAGMENT,
       U_USER, U_PASSWORD, U_ZONEID, U_NPARTS };

/* A URL handle and the strings read from it: a to-be-closed userdata,
** so an error while the table is built frees them. */
typedef struct UrlBox {
  CURLU *u;
  char *part[U_NPARTS];
} UrlBox;

static int
url_close(lua_State *L)
{
  UrlBox *b = (UrlBox *)luaL_checkudata(L, 1, URL_MT);
  for (int i = 0; i < U_NPARTS; i++) {
    curl_free(b->part[i]);
    b->part[i] = NULL;
  }
  if (b->u != NULL) {
    curl_url_cleanup(b->u);
    b->u = NULL;
  }
  return 0;
}

static UrlBox *
url_box(lua_State *L)
{
  UrlBox *b = (UrlBox *)lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, URL_MT);
  lua_toclose(L, -1);
  b->u = curl_url();
  if (b->u == NULL)
    luaL_error(L, "not enough memory");
  return b;
}

/* What an IPv4 address is, or NULL for a public one. */
static const char *
ipv4_kind(const unsigned char a[4])
{
  if (a[0] == 0)
    return "unspecified";
  if (a[0] == 127)
    return "loopback";
  if (a[0] == 169 && a[1] == 254)
    return "link-local";
  if (a[0] == 10 || (a[0] == 172 && (a[1] & 0xf0) == 16)
      || (a[0] == 192 && a[1] == 168)
      || (a[0] == 100 && (a[1] & 0xc0) == 64))          /* 100.64/10 */
    return "private";
  if (a[0] >= 224 && a[0] < 240)
    return "multicast";
  if (a[0] >= 240                                         /* 240/4, bcast */
      || (a[0] == 192 && a[1] == 0 && (a[2] == 0 || a[2] == 2))
      || (a[0] == 198 && (a[1] & 0xfe) == 18)             /* 198.18/15 */
      || (a[0] == 198 && a[1] == 51 && a[2] == 100)
      || (a[0] == 203 && a[1] == 0 && a[2] == 113))
    return "reserved";
  return NULL;
}

/* What an IPv6 address is (an embedded IPv4 address counts as itself),
** or NULL for a public one. */
static const char *
ipv6_kind(const unsigned char a[16])
{
  static const unsigned char zero[16] = { 0 };
  static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0xff, 0xff };
  static const unsigned char nat64[12] = { 0, 0x64, 0xff, 0x9b };
  if (memcmp(a, zero, 15) == 0 && a[15] <= 1)
    return a[15] == 0 ? "unspecified" : "loopback";
  if (memcmp(a, mapped, 12) == 0 || memcmp(a, zero, 12) == 0
      || memcmp(a, nat64, 12) == 0)         /* ::ffff:v4, ::v4, 64:ff9b::v4 */
    return ipv4_kind(a + 12);
  if (a[0] == 0x20 && a[1] == 0x02)         /* 6to4: 2002:v4::/48 */
    return ipv4_kind(a + 2);
  if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
    return "link-local";
  if ((a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0))
    return "private";                       /* fc00::/7, fec0::/10 */
  if (a[0] == 0xff)
    return "multicast";
  if ((a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d && a[3] == 0xb8)
      || (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0)
      || (a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b)
      || (a[0] == 0x01 && memcmp(a + 1, zero, 7) == 0)   /* 100::/64 */
      || (a[0] & 0xe0) != 0x20)             /* outside 2000::/3 */
    return "reserved";
  return NULL;
}

/* [-0, +1, m] The URL in b (its parts read) as a table. */
static void
push_url(lua_State *L, UrlBox *b)
{
  static const struct { CURLUPart part; unsigned flags; } parts[U_NPARTS] = {
    { CURLUPART_URL, 0 }, { CURLUPART_SCHEME, 0 }, { CURLUPART_HOST, 0 },
    { CURLUPART_PORT, CURLU_DEFAULT_PORT }, { CURLUPART_PATH, 0 },
    { CURLUPART_QUERY, 0 }, { CURLUPART_FRAGMENT, 0 },
    { CURLUPART_USER, 0 }, { CURLUPART_PASSWORD, 0 },
    { CURLUPART_ZONEID, 0 },
  };
  for (int i = 0; i < U_NPARTS; i++) {
    CURLUcode rc = curl_url_get(b->u, parts[i].part, &b->part[i],
                                parts[i].flags);
    if (rc == CURLUE_OUT_OF_MEMORY)
      luaL_error(L, "not enough memory");
    if (rc != CURLUE_OK)
      b->part[i] = NULL;
  }
  lua_createtable(L, 0, 10);
  static const char *const names[U_NPARTS] = {
    "url", "scheme", "host", "port", "path", "query", "fragment",
    NULL, NULL, NULL,
  };
  for (int i = 0; i < U_NPARTS; i++) {
    if (names[i] == NULL || b->part[i] == NULL)
      continue;
    if (i == U_PORT) {
      lua_pushinteger(L, (lua_Integer)strtol(b->part[i], NULL, 10));
    } else if (i == U_SCHEME || i == U_HOST) {
      luaL_Buffer lb;                       /* both compare as lowercase */
      luaL_buffinit(L, &lb);
      for (const char *c = b->part[i]; *c; c++)
        luaL_addchar(&lb, (char)tolower((unsigned char)*c));
      luaL_pushresult(&lb);
    } else {
      lua_pushstring(L, b->part[i]);
    }
    lua_setfield(L, -2, names[i]);
  }
  /* user info: only whether there is some (url still holds it) */
  lua_pushboolean(L, b->part[U_USER] != NULL || b->part[U_PASSWORD] != NULL);
  lua_setfield(L, -2, "userinfo");
  /* an IP literal: what kind of address */
  const char *host = b->part[U_HOST];
  if (host != NULL) {
    unsigned char addr[16];
    char buf[64];
    size_t hl = strlen(host);
    const char *kind = NULL;
    int literal = 0;
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof buf) {
      memcpy(buf, host + 1, hl - 2);
      buf[hl - 2] = '\0';
      if (inet_pton(AF_INET6, buf, addr) == 1) {
        literal = 1;
        kind = ipv6_kind(addr);
      }
    } else if (inet_pton(AF_INET, host, addr) == 1) {
      literal = 1;
      kind = ipv4_kind(addr);
    }
    if (literal) {
      lua_pushstring(L, kind != NULL ? kind : "public");
      lua_setfield(L, -2, "ip");
    }
  }
}

static const char *
url_error(CURLUcode rc)
{
  switch (rc) {
    case CURLUE_UNSUPPORTED_SCHEME: return "unsupported url scheme";
    case CURLUE_BAD_PORT_NUMBER: return "invalid port";
    case CURLUE_NO_HOST: case CURLUE_BAD_HOSTNAME:
    case CURLUE_BAD_IPV6: return "invalid host";
    case CURLUE_OUT_OF_MEMORY: return "not enough memory";
    default: return "invalid url";
  }
}

static const char *
check_url_arg(lua_State *L, int idx, const char *what)
{
  size_t len;
  const char *s = luaL_checklstring(L, idx, &len);
  if (strlen(s) != len)
    luaL_error(L, "%s: contains a zero byte", what);
  return s;
}

/* http.parse(url) -> { url, scheme, host, port, path, query, fragment,
** userinfo, ip } | nil, err */
static int
http_parse(lua_State *L)
{
  const char *s = check_url_arg(L, 1, "url");
  UrlBox *b = url_box(L);
  CURLUcode rc = curl_url_set(b->u, CURLUPART_URL, s, 0);
  if (rc == CURLUE_OUT_OF_MEMORY)
    luaL_error(L, "not enough memory");
  if (rc != CURLUE_OK)
    return sb_pushfail(L, url_error(rc));
  push_url(L, b);
  return 1;
}

/* http.resolve(base, ref) -> the parts of ref resolved against base
** (RFC 3986), as http.parse | nil, err */
static int
http_resolve(lua_State *L)
{
  const char *base = check_url_arg(L, 1, "base");
  const char *ref = check_url_arg(L, 2, "ref");
  UrlBox *b = url_box(L);
  CURLUcode rc = curl_url_set(b->u, CURLUPART_URL, base, 0);
  if (rc == CURLUE_OK)
    rc = curl_url_set(b->u, CURLUPART_URL, ref, 0);
  if (rc == CURLUE_OUT_OF_MEMORY)
    luaL_error(L, "not enough memory");
  if (rc != CURLUE_OK)
    return sb_pushfail(L, url_error(rc));
  push_url(L, b);
  return 1;
}

/* }==================================================================== */

static int
http_stats(lua_State *L)
{
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, S.active);
  lua_setfield(L, -2, "active");
  lua_pushinteger(L, S.total);
  lua_setfield(L, -2, "total");
  return 1;
}

/* __gc of the module state (lua_close): detach every transfer still
** running (their coroutines are never resumed), then free curl. */
static int
state_gc(lua_State *L)
{
  (void)L;
  if (!S.alive)
    return 0;
  struct ev_loop *loop = sb_loop();
  while (S.inflight != NULL) {
    Request *r = S.inflight;
    req_unlink(r);
    r->in_multi = 0;
    S.active--;
    curl_multi_remove_handle(S.multi, r->easy);
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
  }
  S.alive = 0;
  while (S.npool > 0)
    curl_easy_cleanup(S.pool[--S.npool]);
  curl_multi_cleanup(S.multi);
  S.multi = NULL;
  while (S.socks != NULL) {
    Sock *s = S.socks;
    ev_io_stop(loop, &s->io);
    sock_unlink(s);
    free(s);
  }
  ev_timer_stop(loop, &S.timer);
  curl_global_cleanup();
  return 0;
}

/* }==================================================================== */

int
luaopen_core_http(lua_State *L)
{
  static const luaL_Reg funcs[] = {
    { "request", http_request },
    { "parse", http_parse },
    { "resolve", http_resolve },
    { "stats", http_stats },
    { NULL, NULL }
  };
  luaL_checkversion(L);

  static const luaL_Reg req_meta[] = {
    { "__gc", req_close },
    { "__close", req_close },
    { NULL, NULL }
  };
  static const luaL_Reg url_meta[] = {
    { "__gc", url_close },
    { "__close", url_close },
    { NULL, NULL }
  };
  sb_createmeta(L, REQUEST_MT, req_meta, NULL);
  sb_lockmeta(L, REQUEST_MT);
  sb_createmeta(L, URL_MT, url_meta, NULL);
  sb_lockmeta(L, URL_MT);

  if (!S.alive) {
    if (curl_global_init_mem(CURL_GLOBAL_DEFAULT, wipe_malloc, wipe_free,
                             wipe_realloc, wipe_strdup, wipe_calloc)
        != CURLE_OK)
      return luaL_error(L, "cannot initialise libcurl");
    S.multi = curl_multi_init();
    if (S.multi == NULL) {
      curl_global_cleanup();
      return luaL_error(L, "cannot initialise libcurl");
    }
    curl_multi_setopt(S.multi, CURLMOPT_SOCKETFUNCTION, socket_fn);
    curl_multi_setopt(S.multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    if (curl_multi_setopt(S.multi, CURLMOPT_MAXCONNECTS, (long)MAX_CONNECTS)
        != CURLM_OK) {
      curl_multi_cleanup(S.multi);
      curl_global_cleanup();
      return luaL_error(L, "cannot initialise libcurl");
    }
    ev_timer_init(&S.timer, timer_cb, 0., 0.);
    S.inflight = NULL;
    S.socks = NULL;
    S.npool = 0;
    S.active = S.total = 0;
    S.alive = 1;
    /* the state's __gc runs at lua_close at the latest */
    lua_newuserdatauv(L, 1, 0);
    if (luaL_newmetatable(L, STATE_MT)) {
      lua_pushcfunction(L, state_gc);
      lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, STATE_KEY);
  }

  luaL_newlib(L, funcs);
  return 1;
}
