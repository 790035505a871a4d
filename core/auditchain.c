/*
** auditchain.c -- core.auditchain: the inner loop of `audit verify`, the
** walk over the audit trail's intact keyed records, in C.
**
** lua/switchboard/audit.lua holds the chain's rules and every verdict;
** this walk only passes over the records it would pass, faster (no row
** tables, no Lua strings per value, one keyed HMAC context per walk), and
** stops before the first record it cannot pass, which audit.lua then
** checks itself (and says what is wrong with it, if anything).
**
** walk(db, master, after, top, prev, seconds) reads the records of
** audit_log from id after + 1 up to id top in id order and passes each one
** that is:
**   - the next id (after + 1, then + 2, ...),
**   - prev_hash equal to prev (the hash of the record before it),
**   - chain the integer 1 (keyed), anchored an integer from 0 below its id,
**   - not a reanchor record (kind 'setting', action 'audit.reanchor':
**     audit.lua collects their warnings),
**   - hash equal to HMAC-SHA256(audit key, "switchboard audit v1\n" prev
**     "\n" canonical), canonical being audit.lua's M.canonical: the 17
**     columns, chain and anchored as a JSON array of exact typed values
**     (null, "i:<integer>", "f:<%a of the float>", "s:<text>"), escaped
**     as lua-cjson escapes (tests/unit/auditchain_spec.lua holds them
**     equal).
** It stops before the first record that is not, at top, or once seconds
** have passed (checked every 16 records). No statement stays open after
** it returns (its read transaction ends with it).
**
** Returns n (the id of the last record passed; after when none), that
** record's hash (prev when none), the highest anchored claim among the
** records passed and the id of the record that made it (0, 0 when none),
** and true when it stopped for time. nil, err when SQLite, OpenSSL or
** the memory failed.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sqlite3.h>

#include "core.h"
#include "netbuf.h"

static const char WALK_SQL[] =
  "SELECT id, at, kind, tenant_id, agent_id, actor, execution_id,"
  " sender_tier, tool, action, params, decision, policies, outcome, detail,"
  " retries, duration_ms, chain, anchored, prev_hash, hash FROM audit_log"
  " WHERE id > ? AND id <= ? ORDER BY id";

/* The result columns of WALK_SQL: the MAC'd ones first. */
enum {
  COL_ID = 0, COL_KIND = 2, COL_ACTION = 9, COL_CHAIN = 17,
  COL_ANCHORED = 18, COL_MACD = 19, COL_PREV = 19, COL_HASH = 20
};

#define MAC_HEAD "switchboard audit v1\n"
#define HASH_HEX 64
#define TIME_EVERY 16

/* lua-cjson's escapes: the control characters, '"', '/', '\\' and DEL;
** NULL: the byte as it is. */
static const char *const escape[256] = {
  "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005",
  "\\u0006", "\\u0007", "\\b", "\\t", "\\n", "\\u000b", "\\f", "\\r",
  "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013",
  "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019",
  "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
  ['"'] = "\\\"", ['/'] = "\\/", ['\\'] = "\\\\", [127] = "\\u007f",
};

/* Write s[0 .. len) at out as the inside of a JSON string (at most 6 *
** len bytes); returns the end. */
static char *
put_escaped(char *out, const unsigned char *s, size_t len)
{
  for (size_t i = 0; i < len; i++) {
    const char *e = escape[s[i]];
    if (e == NULL) {
      *out++ = (char)s[i];
    } else {
      while (*e != '\0')
        *out++ = *e++;
    }
  }
  return out;
}

/* Write v in decimal at out (at most 20 bytes), as Lua's "%lld"; returns
** the end. */
static char *
put_integer(char *out, sqlite3_int64 v)
{
  char tmp[24];
  int n = 0;
  /* the magnitude as unsigned: -INT64_MIN does not fit an int64 */
  sqlite3_uint64 u = v < 0 ? (sqlite3_uint64)0 - (sqlite3_uint64)v
                           : (sqlite3_uint64)v;
  do {
    tmp[n++] = (char)('0' + (int)(u % 10));
    u /= 10;
  } while (u != 0);
  if (v < 0)
    *out++ = '-';
  while (n > 0)
    *out++ = tmp[--n];
  return out;
}

/* One column of a row as canonical() writes it. */
typedef struct Value {
  int type;
  const unsigned char *p;   /* TEXT, BLOB */
  size_t len;
  sqlite3_int64 i;
  double f;
} Value;

#define FLOAT_MAX 48        /* "%a" of a double fits */

/* Read column i of st; returns the most bytes it takes in canonical(). */
static size_t
get_value(sqlite3_stmt *st, int i, Value *v)
{
  v->type = sqlite3_column_type(st, i);
  switch (v->type) {
  case SQLITE_NULL:
    return 4;
  case SQLITE_INTEGER:
    v->i = sqlite3_column_int64(st, i);
    return 4 + 20;
  case SQLITE_FLOAT:
    v->f = sqlite3_column_double(st, i);
    return 4 + FLOAT_MAX;
  default: {                            /* TEXT, BLOB: a Lua string */
    v->p = (const unsigned char *)sqlite3_column_blob(st, i);
    int len = sqlite3_column_bytes(st, i);
    v->len = v->p != NULL && len > 0 ? (size_t)len : 0;
    return 4 + 6 * v->len;
  }
  }
}

/* Write v at out as M.canonical's exact value; returns the end, or NULL
** when a float does not fit FLOAT_MAX (it always does). */
static char *
put_value(char *out, const Value *v)
{
  switch (v->type) {
  case SQLITE_NULL:
    memcpy(out, "null", 4);
    return out + 4;
  case SQLITE_INTEGER:
    memcpy(out, "\"i:", 3);
    out = put_integer(out + 3, v->i);
    break;
  case SQLITE_FLOAT: {
    int n = snprintf(out, FLOAT_MAX + 4, "\"f:%a", v->f);
    if (n < 0 || n >= FLOAT_MAX + 4)
      return NULL;
    out += n;
    break;
  }
  default:
    memcpy(out, "\"s:", 3);
    out = put_escaped(out + 3, v->p, v->len);
    break;
  }
  *out++ = '"';
  return out;
}

/* Whether column i of st is a string (TEXT or BLOB) of exactly s[0 .. len). */
static int
column_is(sqlite3_stmt *st, int i, const char *s, size_t len)
{
  int t = sqlite3_column_type(st, i);
  if (t != SQLITE_TEXT && t != SQLITE_BLOB)
    return 0;
  const void *p = sqlite3_column_blob(st, i);
  return (size_t)sqlite3_column_bytes(st, i) == len
         && (len == 0 || (p != NULL && memcmp(p, s, len) == 0));
}

typedef struct Walk {
  sqlite3_int64 n;          /* the last record passed */
  const char *prev;         /* its hash (or the given prev) */
  size_t prevlen;
  char head[HASH_HEX];      /* the hash of a record passed */
  sqlite3_int64 claim, claim_by;
  int timed_out;
} Walk;

/* Whether the current row of st passes (see the top); -1 when the buffer
** or OpenSSL failed. */
static int
passes(Walk *w, sqlite3_stmt *st, EVP_MAC_CTX *mctx, NbBuf *b)
{
  /* each column's type is read before its value (a value read as another
  ** type would be converted) */
  if (sqlite3_column_type(st, COL_ID) != SQLITE_INTEGER)
    return 0;
  sqlite3_int64 id = sqlite3_column_int64(st, COL_ID);
  if (id != w->n + 1
      || !column_is(st, COL_PREV, w->prev, w->prevlen)
      || sqlite3_column_type(st, COL_CHAIN) != SQLITE_INTEGER
      || sqlite3_column_int64(st, COL_CHAIN) != 1
      || sqlite3_column_type(st, COL_ANCHORED) != SQLITE_INTEGER)
    return 0;
  sqlite3_int64 anchored = sqlite3_column_int64(st, COL_ANCHORED);
  if (anchored < 0 || anchored >= id)
    return 0;
  if (column_is(st, COL_KIND, "setting", 7)
      && column_is(st, COL_ACTION, "audit.reanchor", 14))
    return 0;
  int t = sqlite3_column_type(st, COL_HASH);
  if ((t != SQLITE_TEXT && t != SQLITE_BLOB)
      || sqlite3_column_bytes(st, COL_HASH) != HASH_HEX)
    return 0;
  /* "switchboard audit v1\n" prev "\n" canonical, in one buffer */
  Value v[COL_MACD];
  size_t most = sizeof MAC_HEAD + w->prevlen + 3 + COL_MACD;
  for (int i = 0; i < COL_MACD; i++)
    most += get_value(st, i, &v[i]);
  nb_clear(b);
  if (nb_reserve(b, most) != 0)
    return -1;
  char *start = nb_data(b), *out = start;
  memcpy(out, MAC_HEAD, sizeof MAC_HEAD - 1);
  out += sizeof MAC_HEAD - 1;
  memcpy(out, w->prev, w->prevlen);
  out += w->prevlen;
  *out++ = '\n';
  *out++ = '[';
  for (int i = 0; i < COL_MACD && out != NULL; i++) {
    if (i > 0)
      *out++ = ',';
    out = put_value(out, &v[i]);
  }
  if (out == NULL)
    return -1;
  *out++ = ']';
  unsigned char md[32];
  size_t mdlen = 0;
  if (EVP_MAC_init(mctx, NULL, 0, NULL) != 1
      || EVP_MAC_update(mctx, (const unsigned char *)start,
                        (size_t)(out - start)) != 1
      || EVP_MAC_final(mctx, md, &mdlen, sizeof md) != 1 || mdlen != sizeof md)
    return -1;
  char h[HASH_HEX];
  sb_hex(md, sizeof md, h);
  const void *stored = sqlite3_column_blob(st, COL_HASH);
  if (stored == NULL || CRYPTO_memcmp(h, stored, HASH_HEX) != 0)
    return 0;
  memcpy(w->head, h, HASH_HEX);
  w->prev = w->head;
  w->prevlen = HASH_HEX;
  w->n = id;
  if (anchored > w->claim) {
    w->claim = anchored;
    w->claim_by = id;
  }
  return 1;
}

static int
walk(lua_State *L)
{
  sqlite3 *db = sb_store_handle(L, 1);
  lua_Integer after = luaL_checkinteger(L, 3);
  lua_Integer top = luaL_checkinteger(L, 4);
  size_t prevlen;
  const char *prev = luaL_checklstring(L, 5, &prevlen);
  lua_Number seconds = luaL_checknumber(L, 6);
  Walk w = { .n = after, .prev = prev, .prevlen = prevlen };
  /* nothing below raises until the statement and the context are freed */
  EVP_MAC_CTX *mctx = sb_audit_mac_ctx(L, 2);
  if (mctx == NULL)
    return sb_pushfail(L, "audit chain: the MAC could not be set up");
  const char *err = NULL;
  char msg[256];
  sqlite3_stmt *st = NULL;
  NbBuf b = { 0 };
  if (sqlite3_prepare_v2(db, WALK_SQL, (int)sizeof WALK_SQL, &st, NULL)
        != SQLITE_OK
      || sqlite3_bind_int64(st, 1, (sqlite3_int64)after) != SQLITE_OK
      || sqlite3_bind_int64(st, 2, (sqlite3_int64)top) != SQLITE_OK) {
    err = sqlite3_errmsg(db);
    goto out;
  }
  double until = sb_monotonic() + (double)seconds;
  int rc, k = 0;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int ok = passes(&w, st, mctx, &b);
    if (ok < 0) {
      err = "audit chain: out of memory, or the MAC failed";
      goto out;
    }
    if (ok == 0)
      break;
    if (++k % TIME_EVERY == 0 && sb_monotonic() >= until) {
      w.timed_out = w.n < top;
      break;
    }
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE)
    err = sqlite3_errmsg(db);
out:
  if (err != NULL)                      /* before the finalize frees it */
    snprintf(msg, sizeof msg, "%s", err);
  sqlite3_finalize(st);
  EVP_MAC_CTX_free(mctx);
  nb_free(&b);
  if (err != NULL)
    return sb_pushfail(L, msg);
  lua_pushinteger(L, (lua_Integer)w.n);
  lua_pushlstring(L, w.prev, w.prevlen);
  lua_pushinteger(L, (lua_Integer)w.claim);
  lua_pushinteger(L, (lua_Integer)w.claim_by);
  lua_pushboolean(L, w.timed_out);
  return 5;
}

static const luaL_Reg funcs[] = {
  { "walk", walk },
  { NULL, NULL }
};

int
luaopen_core_auditchain(lua_State *L)
{
  luaL_newlib(L, funcs);
  return 1;
}
