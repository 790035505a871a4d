/*
** store.c -- core.store: SQLite for the runtime's own state (tenants,
** outbox, audit log).
**
** One Db per connection: WAL, synchronous=FULL (every commit is fsynced),
** foreign keys on, a 5 s busy timeout. Prepared statements are cached by
** their SQL text in a Lua table kept as the Db's uservalue
** (sql -> light userdata sqlite3_stmt*); close() finalizes every statement
** of the connection and closes it, and is also __gc and __close.
**
** Parameters are positional and bound by Lua type: nil -> NULL,
** boolean -> 0/1, integer -> INTEGER, float -> REAL, string -> TEXT,
** store.blob(s) -> BLOB. Columns come back as integer, float, string or
** nil. Errors return nil and SQLite's message (never the SQL text);
** misuse (bad parameter types or counts, SQL text with a NUL byte, use
** after close) raises. db:run returns only the change count, db:insert
** only the new rowid: a failed statement cannot be taken for an id.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "core.h"

#define DB_MT "core.store.Db"
#define BLOB_MT "core.store.Blob"

/* Past this many cached statements the cache is emptied and refilled:
** a bound on memory if a caller builds SQL text dynamically. */
#define STMT_CACHE_MAX 256

typedef struct Db {
  sqlite3 *db;              /* NULL: closed */
  int cached;               /* statements in the cache */
} Db;

/*
** {======================================================
** Opening (no Lua here)
** =======================================================
*/

static void
copy_msg(char *out, size_t size, const char *msg)
{
  snprintf(out, size, "%s", msg != NULL ? msg : "unknown error");
}

/* The PRAGMAs every connection runs with. 0, or -1 with msg filled. */
static int
configure(sqlite3 *db, int in_memory, char *msg, size_t size)
{
  char *err = NULL;
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, 5000);
  if (sqlite3_exec(db, "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL",
                   NULL, NULL, &err) != SQLITE_OK) {
    copy_msg(msg, size, err != NULL ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    return -1;
  }
  /* journal_mode answers with the mode in force, which is not an error
  ** when WAL cannot be had: check it */
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode = WAL", -1, &st, NULL);
  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    copy_msg(msg, size, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return -1;
  }
  const char *mode = (const char *)sqlite3_column_text(st, 0);
  int ok = mode != NULL
           && (strcmp(mode, "wal") == 0
               || (in_memory && strcmp(mode, "memory") == 0));
  sqlite3_finalize(st);
  if (!ok) {
    copy_msg(msg, size, "cannot enable the WAL journal mode");
    return -1;
  }
  return 0;
}

/* }====================================================== */


/*
** {======================================================
** Db lifetime
** =======================================================
*/

static Db *
check_db(lua_State *L)
{
  Db *d = (Db *)luaL_checkudata(L, 1, DB_MT);
  if (d->db == NULL)
    luaL_error(L, "attempt to use a closed database");
  return d;
}

/* The connection of the open Db at idx, for core.auditchain; raises when
** idx is not one. */
struct sqlite3 *
sb_store_handle(lua_State *L, int idx)
{
  Db *d = (Db *)luaL_checkudata(L, idx, DB_MT);
  if (d->db == NULL)
    luaL_error(L, "attempt to use a closed database");
  return d->db;
}

static void
finalize_all(sqlite3 *db)
{
  sqlite3_stmt *st;
  while ((st = sqlite3_next_stmt(db, NULL)) != NULL)
    sqlite3_finalize(st);
}

static int
db_close(lua_State *L)
{
  Db *d = (Db *)luaL_checkudata(L, 1, DB_MT);
  if (d->db != NULL) {
    finalize_all(d->db);
    sqlite3_close_v2(d->db);
    d->db = NULL;
    d->cached = 0;
    /* drop the stale pointers too; no allocation (__gc must not raise) */
    lua_pushnil(L);
    lua_setiuservalue(L, 1, 1);
  }
  return 0;
}

static int
db_tostring(lua_State *L)
{
  Db *d = (Db *)luaL_checkudata(L, 1, DB_MT);
  lua_pushstring(L, d->db == NULL ? DB_MT " (closed)" : DB_MT);
  return 1;
}

/* store.open(path) -> Db | nil, err */
static int
store_open(lua_State *L)
{
  const char *path = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  Db *d = (Db *)lua_newuserdatauv(L, sizeof *d, 1);
  d->db = NULL;
  d->cached = 0;
  luaL_setmetatable(L, DB_MT);
  lua_newtable(L);
  lua_setiuservalue(L, 2, 1);

  char msg[256];
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                           | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    copy_msg(msg, sizeof msg,
             db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return sb_pushfail(L, msg);
  }
  int in_memory = path[0] == '\0' || strcmp(path, ":memory:") == 0;
  if (configure(db, in_memory, msg, sizeof msg) != 0) {
    finalize_all(db);
    sqlite3_close_v2(db);
    return sb_pushfail(L, msg);
  }
  d->db = db;
  return 1;
}

/* }====================================================== */


/*
** {======================================================
** Statements: cache, binding, rows
** =======================================================
*/

/* [-0, +0, e] The cached statement for the SQL text at index sqlidx,
** reset and with no bindings; prepared and cached on first use. Returns
** NULL (with an error message pushed) when SQLite refuses it. Raises for
** text that is not exactly one statement. */
static sqlite3_stmt *
get_stmt(lua_State *L, Db *d, int sqlidx)
{
  size_t len;
  const char *sql = luaL_checklstring(L, sqlidx, &len);
  if (memchr(sql, '\0', len) != NULL)
    luaL_argerror(L, sqlidx, "SQL text contains a NUL byte");
  lua_getiuservalue(L, 1, 1);                         /* cache */
  lua_pushvalue(L, sqlidx);
  lua_rawget(L, -2);
  sqlite3_stmt *st = (sqlite3_stmt *)lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (st != NULL) {
    lua_pop(L, 1);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
  }
  if (d->cached >= STMT_CACHE_MAX) {
    /* finalize the cached ones only: none is in use between calls */
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
      sqlite3_finalize((sqlite3_stmt *)lua_touserdata(L, -1));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, 1, 1);
    d->cached = 0;
  }
  const char *tail = NULL;
  if (len > (size_t)0x7fffffff)
    luaL_argerror(L, sqlidx, "SQL text too long");
  int rc = sqlite3_prepare_v3(d->db, sql, (int)len + 1,
                              SQLITE_PREPARE_PERSISTENT, &st, &tail);
  if (rc != SQLITE_OK) {
    lua_pop(L, 1);
    lua_pushstring(L, sqlite3_errmsg(d->db));
    return NULL;
  }
  if (st == NULL)
    luaL_argerror(L, sqlidx, "no SQL statement");
  if (tail != NULL && *tail != '\0') {
    /* what follows must be empty: whitespace, semicolons, comments */
    sqlite3_stmt *more = NULL;
    const char *end = sql + len;
    if (tail < end)
      sqlite3_prepare_v2(d->db, tail, (int)(end - tail), &more, NULL);
    if (more == NULL && sqlite3_errcode(d->db) == SQLITE_OK)
      goto single;
    sqlite3_finalize(more);
    sqlite3_finalize(st);
    luaL_argerror(L, sqlidx, "only one SQL statement allowed (db:exec runs "
                  "several)");
  }
single:
  lua_pushvalue(L, sqlidx);
  lua_pushlightuserdata(L, st);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  d->cached++;
  return st;
}

/* [-0, +0, e] Bind the arguments from index first to the top to st. */
static void
bind_args(lua_State *L, sqlite3_stmt *st, int first)
{
  int nargs = lua_gettop(L) - first + 1;
  int nparams = sqlite3_bind_parameter_count(st);
  if (nargs != nparams)
    luaL_error(L, "wrong number of SQL parameters: the statement takes %d, "
               "got %d", nparams, nargs);
  for (int i = 1; i <= nparams; i++) {
    int idx = first + i - 1;
    int rc;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
      rc = sqlite3_bind_null(st, i);
      break;
    case LUA_TBOOLEAN:
      rc = sqlite3_bind_int(st, i, lua_toboolean(L, idx));
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        rc = sqlite3_bind_int64(st, i, (sqlite3_int64)lua_tointeger(L, idx));
      else
        rc = sqlite3_bind_double(st, i, (double)lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      rc = sqlite3_bind_text64(st, i, s, (sqlite3_uint64)len,
                               SQLITE_TRANSIENT, SQLITE_UTF8);
      break;
    }
    default:
      if (luaL_testudata(L, idx, BLOB_MT) != NULL) {
        size_t len;
        lua_getiuservalue(L, idx, 1);
        const char *s = lua_tolstring(L, -1, &len);
        rc = sqlite3_bind_blob64(st, i, s, (sqlite3_uint64)len,
                                 SQLITE_TRANSIENT);
        lua_pop(L, 1);
        break;
      }
      luaL_error(L, "bad SQL parameter #%d: cannot bind a %s", i,
                 luaL_typename(L, idx));
      return;
    }
    if (rc != SQLITE_OK)
      luaL_error(L, "cannot bind SQL parameter #%d: %s", i, sqlite3_errstr(rc));
  }
}

/* [-0, +1, m] the current row of st as a table keyed by column name */
static void
push_row(lua_State *L, sqlite3_stmt *st)
{
  int n = sqlite3_column_count(st);
  lua_createtable(L, 0, n);
  for (int i = 0; i < n; i++) {
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
      lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, i));
      break;
    case SQLITE_FLOAT:
      lua_pushnumber(L, (lua_Number)sqlite3_column_double(st, i));
      break;
    case SQLITE_TEXT:
    case SQLITE_BLOB: {
      const void *p = sqlite3_column_blob(st, i);
      int len = sqlite3_column_bytes(st, i);
      lua_pushlstring(L, p != NULL ? (const char *)p : "",
                      len > 0 ? (size_t)len : 0);
      break;
    }
    default:
      continue;                         /* NULL: no key */
    }
    lua_setfield(L, -2, sqlite3_column_name(st, i));
  }
}

/* [-0, +2, m] nil, the error of st's last step; st reset */
static int
step_fail(lua_State *L, Db *d, sqlite3_stmt *st)
{
  sb_pushfail(L, sqlite3_errmsg(d->db));
  sqlite3_reset(st);
  return 2;
}

/* Statement in a finished state: reset (releases its locks) and unbound. */
static void
done(sqlite3_stmt *st)
{
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

/* }====================================================== */


/*
** {======================================================
** Db methods
** =======================================================
*/

/* Run sql with sqlite3_exec and push true, or fail and SQLite's message. */
static int
exec_result(lua_State *L, Db *d, const char *sql)
{
  char *err = NULL;
  if (sqlite3_exec(d->db, sql, NULL, NULL, &err) != SQLITE_OK) {
    sb_pushfail(L, err != NULL ? err : sqlite3_errmsg(d->db));
    sqlite3_free(err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* db:exec(sql) -> true | nil, err (several statements, no parameters) */
static int
db_exec(lua_State *L)
{
  Db *d = check_db(L);
  size_t len;
  const char *sql = luaL_checklstring(L, 2, &len);
  /* sqlite3_exec reads up to the first NUL: refuse text it would cut */
  if (memchr(sql, '\0', len) != NULL)
    luaL_argerror(L, 2, "SQL text contains a NUL byte");
  return exec_result(L, d, sql);
}

/* db:query(sql, ...) -> array of rows | nil, err */
static int
db_query(lua_State *L)
{
  Db *d = check_db(L);
  sqlite3_stmt *st = get_stmt(L, d, 2);
  if (st == NULL)
    return sb_pushfail(L, lua_tostring(L, -1));
  bind_args(L, st, 3);
  lua_newtable(L);
  lua_Integer n = 0;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    push_row(L, st);
    lua_rawseti(L, -2, ++n);
  }
  if (rc != SQLITE_DONE)
    return step_fail(L, d, st);
  done(st);
  return 1;
}

/* db:row(sql, ...) -> first row | nil | nil, err */
static int
db_row(lua_State *L)
{
  Db *d = check_db(L);
  sqlite3_stmt *st = get_stmt(L, d, 2);
  if (st == NULL)
    return sb_pushfail(L, lua_tostring(L, -1));
  bind_args(L, st, 3);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    push_row(L, st);
  } else if (rc == SQLITE_DONE) {
    lua_pushnil(L);
  } else {
    return step_fail(L, d, st);
  }
  done(st);
  return 1;
}

/* [-0, +0|2, e] Prepare, bind and step sql (index 2) to its end. Returns
** 0 when it ran, or the number of values pushed (nil, err) when it failed. */
static int
run_stmt(lua_State *L, Db *d)
{
  sqlite3_stmt *st = get_stmt(L, d, 2);
  if (st == NULL)
    return sb_pushfail(L, lua_tostring(L, -1));
  bind_args(L, st, 3);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    ;
  if (rc != SQLITE_DONE)
    return step_fail(L, d, st);
  done(st);
  return 0;
}

/* db:run(sql, ...) -> changes (an integer, 0 included) | nil, err */
static int
db_run(lua_State *L)
{
  Db *d = check_db(L);
  int nret = run_stmt(L, d);
  if (nret != 0)
    return nret;
  lua_pushinteger(L, (lua_Integer)sqlite3_changes64(d->db));
  return 1;
}

/* db:insert(sql, ...) -> rowid of the new row | nil, err. A statement
** that inserted no row (INSERT OR IGNORE of a duplicate, a SELECT) is an
** error: the connection's last rowid would be another statement's. */
static int
db_insert(lua_State *L)
{
  Db *d = check_db(L);
  sqlite3_int64 before = sqlite3_total_changes64(d->db);
  int nret = run_stmt(L, d);
  if (nret != 0)
    return nret;
  if (sqlite3_total_changes64(d->db) == before || sqlite3_changes64(d->db) < 1)
    return sb_pushfail(L, "no row was inserted");
  lua_pushinteger(L, (lua_Integer)sqlite3_last_insert_rowid(d->db));
  return 1;
}

/* db:in_transaction() -> boolean: a transaction is open (nothing written
** now is durable before its COMMIT) */
static int
db_in_transaction(lua_State *L)
{
  Db *d = check_db(L);
  lua_pushboolean(L, !sqlite3_get_autocommit(d->db));
  return 1;
}

/* [-0, +1|2, e] run a fixed, parameterless statement: true | nil, err */
static int
run_simple(lua_State *L, const char *sql)
{
  Db *d = check_db(L);
  lua_settop(L, 1);
  lua_pushstring(L, sql);
  sqlite3_stmt *st = get_stmt(L, d, 2);
  if (st == NULL)
    return sb_pushfail(L, lua_tostring(L, -1));
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW)
    ;
  if (rc != SQLITE_DONE)
    return step_fail(L, d, st);
  done(st);
  lua_pushboolean(L, 1);
  return 1;
}

static int
db_begin(lua_State *L)
{
  return run_simple(L, "BEGIN IMMEDIATE");
}

static int
db_commit(lua_State *L)
{
  return run_simple(L, "COMMIT");
}

static int
db_rollback(lua_State *L)
{
  return run_simple(L, "ROLLBACK");
}

/* db:user_version() -> integer | nil, err */
static int
db_user_version(lua_State *L)
{
  Db *d = check_db(L);
  lua_settop(L, 1);
  lua_pushliteral(L, "PRAGMA user_version");
  sqlite3_stmt *st = get_stmt(L, d, 2);
  if (st == NULL)
    return sb_pushfail(L, lua_tostring(L, -1));
  if (sqlite3_step(st) != SQLITE_ROW)
    return step_fail(L, d, st);
  lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(st, 0));
  done(st);
  return 1;
}

/* db:set_user_version(n) -> true | nil, err */
static int
db_set_user_version(lua_State *L)
{
  Db *d = check_db(L);
  lua_Integer n = luaL_checkinteger(L, 2);
  luaL_argcheck(L, n >= -2147483647 - 1 && n <= 2147483647, 2,
                "out of range (32-bit)");
  char sql[64];
  snprintf(sql, sizeof sql, "PRAGMA user_version = %lld", (long long)n);
  return exec_result(L, d, sql);
}

/* }====================================================== */


/*
** {======================================================
** Online backup (SQLite's backup API)
** =======================================================
*/

/* A backup in progress from a Db into a new file. The file is created
** 0600 and exclusively (an existing file is never overwritten); until
** the last step succeeds it is partial and close() removes it. The Db
** is the uservalue, so it outlives its backups; writes made through it
** meanwhile are copied to the backup too (same connection), so the
** snapshot is consistent as of the last step. */
typedef struct {
  sqlite3 *dest;            /* NULL once closed */
  sqlite3_backup *bk;       /* NULL once finished */
  Db *src;
  char *path;               /* removed on close unless complete */
  int complete;
} Backup;

#define BACKUP_MT "core.store.Backup"

static void
unlink_partial(const char *path)
{
  char journal[4096];
  unlink(path);
  if (snprintf(journal, sizeof journal, "%s-journal", path) < (int)sizeof journal)
    unlink(journal);
}

/* close path of a Backup: finish, close the destination, remove a partial
** file; also __gc and __close */
static int
backup_close(lua_State *L)
{
  Backup *b = (Backup *)luaL_checkudata(L, 1, BACKUP_MT);
  if (b->bk != NULL) {
    sqlite3_backup_finish(b->bk);
    b->bk = NULL;
  }
  if (b->dest != NULL) {
    sqlite3_close_v2(b->dest);
    b->dest = NULL;
  }
  if (b->path != NULL) {
    if (!b->complete)
      unlink_partial(b->path);
    free(b->path);
    b->path = NULL;
  }
  return 0;
}

/* [-0, +2, m] nil, msg after closing (and removing) the backup at 1 */
static int
backup_fail(lua_State *L, const char *what, const char *why)
{
  char msg[512];
  snprintf(msg, sizeof msg, "%s: %s", what, why != NULL ? why : "unknown error");
  lua_settop(L, 1);
  backup_close(L);
  return sb_pushfail(L, msg);
}

/* db:backup(path) -> Backup | nil, err */
static int
db_backup(lua_State *L)
{
  Db *d = check_db(L);
  size_t plen;
  const char *path = luaL_checklstring(L, 2, &plen);
  luaL_argcheck(L, plen > 0 && strlen(path) == plen, 2, "empty path or a NUL byte");
  lua_settop(L, 2);
  Backup *b = (Backup *)lua_newuserdatauv(L, sizeof *b, 1);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, BACKUP_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 3, 1);
  b->src = d;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    char msg[600];
    snprintf(msg, sizeof msg, "%s: %s", path,
             e == EEXIST ? "exists already (a backup never overwrites a file)" : strerror(e));
    return sb_pushfail(L, msg);
  }
  int ok = fchmod(fd, 0600) == 0;
  int e = errno;
  close(fd);
  b->path = strdup(path);
  lua_replace(L, 1);            /* the Backup at 1, for backup_fail */
  if (b->path == NULL) {
    unlink(path);
    return backup_fail(L, path, "out of memory");
  }
  if (!ok)
    return backup_fail(L, path, strerror(e));
  int rc = sqlite3_open_v2(path, &b->dest, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK)
    return backup_fail(L, path, b->dest != NULL ? sqlite3_errmsg(b->dest) : sqlite3_errstr(rc));
  b->bk = sqlite3_backup_init(b->dest, "main", d->db, "main");
  if (b->bk == NULL)
    return backup_fail(L, path, sqlite3_errmsg(b->dest));
  lua_settop(L, 1);
  return 1;
}

/* backup:step(pages) -> done, remaining, pagecount | nil, err. Copies up
** to pages pages; done is true once the file is complete and closed. On
** an error the partial file is removed. */
static int
backup_step(lua_State *L)
{
  Backup *b = (Backup *)luaL_checkudata(L, 1, BACKUP_MT);
  lua_Integer pages = luaL_optinteger(L, 2, 64);
  luaL_argcheck(L, pages > 0 && pages <= 0x7fffffff, 2, "pages must be positive");
  if (b->complete) {
    lua_pushboolean(L, 1);
    lua_pushinteger(L, 0);
    lua_pushinteger(L, 0);
    return 3;
  }
  if (b->bk == NULL)
    luaL_error(L, "attempt to use a closed backup");
  if (b->src->db == NULL)
    luaL_error(L, "the database of this backup was closed");
  int rc = sqlite3_backup_step(b->bk, (int)pages);
  int remaining = sqlite3_backup_remaining(b->bk);
  int total = sqlite3_backup_pagecount(b->bk);
  if (rc == SQLITE_OK || rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
    lua_pushboolean(L, 0);
    lua_pushinteger(L, remaining);
    lua_pushinteger(L, total);
    return 3;
  }
  if (rc != SQLITE_DONE)
    return backup_fail(L, b->path, sqlite3_errstr(rc));
  rc = sqlite3_backup_finish(b->bk);
  b->bk = NULL;
  if (rc != SQLITE_OK)
    return backup_fail(L, b->path, sqlite3_errmsg(b->dest));
  rc = sqlite3_close(b->dest);
  if (rc != SQLITE_OK)
    return backup_fail(L, b->path, sqlite3_errstr(rc));
  b->dest = NULL;
  b->complete = 1;
  lua_pushboolean(L, 1);
  lua_pushinteger(L, 0);
  lua_pushinteger(L, total);
  return 3;
}

/* store.unused(path) -> true | false, why | nil, err: whether the database
** file at path can be locked exclusively at once, that is whether no other
** connection (a running server) has it open; for restore, which must not
** replace a database under a server. The lock is released before return. */
static int
store_unused(lua_State *L)
{
  const char *path = luaL_checkstring(L, 1);
  sqlite3 *db = NULL;
  int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
  if (rc != SQLITE_OK) {
    char msg[256];
    copy_msg(msg, sizeof msg, db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return sb_pushfail(L, msg);
  }
  /* EXCLUSIVE locking mode before the first access: in WAL mode too the
  ** connection must then lock the file itself, which fails while another
  ** connection uses it */
  rc = sqlite3_exec(db, "PRAGMA busy_timeout = 0; PRAGMA locking_mode = EXCLUSIVE;"
                    " BEGIN EXCLUSIVE; SELECT count(*) FROM sqlite_master; COMMIT",
                    NULL, NULL, NULL);
  int busy = (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
  char msg[256];
  copy_msg(msg, sizeof msg, sqlite3_errmsg(db));
  sqlite3_close_v2(db);
  if (rc == SQLITE_OK) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (busy) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, msg);
    return 2;
  }
  return sb_pushfail(L, msg);
}

static const luaL_Reg backup_meta[] = {
  { "__gc", backup_close },
  { "__close", backup_close },
  { NULL, NULL }
};

static const luaL_Reg backup_methods[] = {
  { "step", backup_step },
  { "close", backup_close },
  { NULL, NULL }
};

/* }====================================================== */


/* store.blob(s) -> a marker that binds s as a BLOB */
static int
store_blob(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TSTRING);
  lua_newuserdatauv(L, 0, 1);
  luaL_setmetatable(L, BLOB_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static int
blob_tostring(lua_State *L)
{
  luaL_checkudata(L, 1, BLOB_MT);
  lua_getiuservalue(L, 1, 1);
  lua_pushfstring(L, BLOB_MT " (%d bytes)", (int)lua_rawlen(L, -1));
  return 1;
}

static const luaL_Reg db_methods[] = {
  { "exec", db_exec },
  { "query", db_query },
  { "row", db_row },
  { "run", db_run },
  { "insert", db_insert },
  { "in_transaction", db_in_transaction },
  { "begin", db_begin },
  { "commit", db_commit },
  { "rollback", db_rollback },
  { "user_version", db_user_version },
  { "set_user_version", db_set_user_version },
  { "backup", db_backup },
  { "close", db_close },
  { NULL, NULL }
};

static const luaL_Reg db_meta[] = {
  { "__gc", db_close },
  { "__close", db_close },
  { "__tostring", db_tostring },
  { NULL, NULL }
};

static const luaL_Reg blob_meta[] = {
  { "__tostring", blob_tostring },
  { NULL, NULL }
};

static const luaL_Reg store_funcs[] = {
  { "open", store_open },
  { "blob", store_blob },
  { "unused", store_unused },
  { NULL, NULL }
};

int
luaopen_core_store(lua_State *L)
{
  sb_createmeta(L, DB_MT, db_meta, db_methods);
  sb_createmeta(L, BLOB_MT, blob_meta, NULL);
  sb_createmeta(L, BACKUP_MT, backup_meta, backup_methods);
  luaL_newlib(L, store_funcs);
  return 1;
}
