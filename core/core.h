/*
** core.h -- what the core.* modules share: the libev loop, the main Lua
** state, and the coroutine scheduling that lets a C operation yield the
** calling coroutine and have a libev callback resume it later
** (the cosocket model).
*/
#ifndef SB_CORE_H
#define SB_CORE_H

#include <lua.h>
#include <lauxlib.h>
#include <ev.h>

#define SB_VERSION "0.1.0"

/* A macro's value as a string literal: SB_STR(64) is "64". */
#define SB_STR_(x) #x
#define SB_STR(x) SB_STR_(x)

/* The one libev loop of the process (EV_DEFAULT). */
struct ev_loop *sb_loop(void);

/* The main Lua state; set once by sb_new_state. Callbacks never keep a
** coroutine's lua_State across events: they keep a registry ref. */
void sb_set_main(lua_State *L);
lua_State *sb_main(void);

/* [-0, +0, e] Raise a clear error unless L is a coroutine that may yield
** (a C operation that waits must be called from a runtime coroutine). */
void sb_check_yieldable(lua_State *L, const char *what);

/* [-0, +0, -] Pin the running coroutine L in the registry; returns the ref.
** The C operation keeps the ref until its event fires. */
int sb_pin(lua_State *L);

/* Resume the coroutine pinned by ref: unpin it, let push() push the
** results (returns how many; it pushes them on the state it is given,
** which is not the coroutine's), then resume. Never raises: it runs in
** protected mode, so a libev callback may call it. Errors inside the
** coroutine are routed to the error handler; an error making the values
** (out of memory) is reported too and the coroutine, which can no longer
** be resumed, is closed. */
typedef int (*sb_push_fn)(lua_State *L, void *ud);
void sb_resume_ref(int ref, sb_push_fn push, void *ud);

/* A push function for sb_resume_ref: true. */
int sb_push_true(lua_State *L, void *ud);

/* [-(nargs+1), +0, m] Start the function below nargs arguments on the
** stack of L in a new coroutine and run it until it first yields. Errors
** in the coroutine go to the error handler; creating it may raise (out
** of memory): in a libev callback, call it under sb_protect. */
void sb_spawn(lua_State *L, int nargs);

/* [-(nargs+2), +0, -] sb_spawn with the thread already made: the stack
** holds the thread (lua_newthread), the function, its nargs arguments. */
void sb_start(lua_State *L, int nargs);

/* The protected path of a libev callback: run fn on the main state in
** protected mode, with ud as its one argument (a light userdata). An
** error (out of memory: core.mem's ceiling or a real one) is reported to
** the error handler as "what: message" and the main stack is restored.
** Returns 0, or -1 after an error. Every callback that calls into Lua
** (other than through sb_resume_ref, which protects itself) does so
** through sb_protect: no Lua error may unwind through ev_run. */
int sb_protect(lua_CFunction fn, void *ud, const char *what);

/* Queue the resume of the coroutine pinned by ref (the ref moves to the
** queue): it resumes after the next poll with the values of the table
** pinned by argref (nargs of them; LUA_NOREF: none), or with nil, err
** when err is not NULL (a static string). Returns 0, or -1 when it could
** not be queued (both refs dropped). */
int sb_defer_resume(int ref, int argref, int nargs, const char *err);

/* [-0, +0, m] Set up the deferred-resume queue (once; core.loop's
** opener calls it); lua_close tears it down. */
void sb_sched_open(lua_State *L);

/* [-0, +0, -] Report an error (with traceback already attached, or not)
** to the Lua error handler set by loop.set_error_handler, else stderr. */
void sb_report_error(const char *msg);

/* The error-handler registry key. */
#define SB_ERRHANDLER_KEY "core.loop.errhandler"

/* Time since an arbitrary start, in seconds, monotonic. */
double sb_monotonic(void);

/* [-0, +0, -] Drop a registry ref (of the main state) and mark it empty. */
void sb_unref(int *ref);

/* [-0, +1, -] Anchor the object pinned by ref on the main stack while a
** callback runs (what the callback resumes or spawns may unpin or close
** it); sb_unanchor pops it. */
void sb_anchor(int ref);
void sb_unanchor(void);

/* [-0, +2, m] The "nil, err" of a call that failed: fail (nil) and msg.
** Returns 2. */
int sb_pushfail(lua_State *L, const char *msg);

/* [-0, +2, m] sb_pushfail's errno variant: nil and "what: reason" (or
** "reason" when what is NULL), the reason being strerror(err) in lower
** case. */
int sb_push_errno(lua_State *L, const char *what, int err);

/* [-0, +0, m] The metatable name (once: nothing when it exists): the
** metamethods meta (__gc, __close, __tostring...) and, unless methods is
** NULL, a table of methods as __index. */
void sb_createmeta(lua_State *L, const char *name, const luaL_Reg *meta,
                   const luaL_Reg *methods);

/* [-0, +0, m] Hide the metatable name from Lua: getmetatable answers
** "locked" and setmetatable refuses. */
void sb_lockmeta(lua_State *L, const char *name);

/* [-0, +0, m] Pin the value at idx in *ref (a registry ref) unless it is
** pinned already. */
void sb_pin_value(lua_State *L, int idx, int *ref);

/* A message handler for lua_pcall: the error message (or a note on a
** non-string error object) with a traceback. */
int sb_traceback(lua_State *L);

/* An open core.vault.Credential at idx, as core.http applies it (vault.c):
** kind; name is the Basic username or the header kind's header name (NULL
** for bearer); secret is in the credential's locked page, NUL-terminated,
** valid while the credential stays open (checked for a header value when
** the kind is bearer or header). 0 when idx is not an open credential. */
typedef enum { SB_CRED_BASIC, SB_CRED_BEARER, SB_CRED_HEADER } SbCredKind;
typedef struct SbCredential {
  SbCredKind kind;
  const char *name;
  size_t nlen;
  const char *secret;
  size_t slen;
} SbCredential;
int sb_credential(lua_State *L, int idx, SbCredential *out);

/* For core.auditchain's walk (auditchain.c): the SQLite connection of an
** open core.store.Db at idx (store.c), and a new HMAC-SHA256 context keyed
** with the audit key of an open core.vault.Master at idx (vault.c; the
** caller frees it with EVP_MAC_CTX_free; NULL when OpenSSL fails). Both
** raise when idx is not an open one. */
struct sqlite3;
struct evp_mac_ctx_st;
struct sqlite3 *sb_store_handle(lua_State *L, int idx);
/* s[0 .. len) as 2 * len lowercase hex digits at out (vault.c). */
void sb_hex(const unsigned char *s, size_t len, char *out);
struct evp_mac_ctx_st *sb_audit_mac_ctx(lua_State *L, int idx);

/* The main Lua state with the standard libraries, the core.* modules
** preloaded and package.path starting at root's lua/ (init.c); sets
** sb_main. NULL when the state cannot be created. */
lua_State *sb_new_state(const char *root);

/* Locked memory for secrets (core/vault.c): len bytes rounded up to whole
** pages, mlock'd (best effort) and MADV_DONTDUMP; single pages come from a
** small pool of wiped pages. NULL when out of memory; *maplen is what
** sb_secure_free takes back (it wipes first). */
unsigned char *sb_secure_alloc(size_t len, size_t *maplen);
void sb_secure_free(unsigned char *p, size_t maplen);

/*
** core.loop's types, one file each: their metatables (registered by
** luaopen_core_loop) and the module functions that make them.
*/
void sb_listener_open(lua_State *L);    /* listener.c */
int sb_loop_listen(lua_State *L);
int sb_loop_listen_fd(lua_State *L);

typedef struct SbStream SbStream;       /* stream.c: core.loop.Stream */
void sb_stream_open(lua_State *L);
int sb_loop_connect(lua_State *L);
int sb_loop_stream(lua_State *L);
/* [-0, +1, m] A new Stream, closed. */
SbStream *sb_stream_new(lua_State *L);
/* Open s on fd (nonblocking); fds it must not close: noclose. */
void sb_stream_attach(SbStream *s, int fd, int noclose);

void sb_timer_open(lua_State *L);       /* timer.c */
int sb_loop_timer(lua_State *L);

void sb_signal_open(lua_State *L);      /* signal.c */
int sb_loop_signal(lua_State *L);

void sb_wait_open(lua_State *L);        /* wait.c: sleep, wait, wake */
int sb_loop_sleep(lua_State *L);
int sb_loop_wait(lua_State *L);
int sb_loop_wake(lua_State *L);

/* Module openers, preloaded by sb_new_state. */
int luaopen_core_loop(lua_State *L);
int luaopen_core_http(lua_State *L);
int luaopen_core_vault(lua_State *L);
int luaopen_core_store(lua_State *L);
int luaopen_core_httpd(lua_State *L);
int luaopen_core_mem(lua_State *L);
int luaopen_core_phone(lua_State *L);
int luaopen_core_fs(lua_State *L);
int luaopen_core_notify(lua_State *L);
int luaopen_core_jose(lua_State *L);
int luaopen_core_jsonint(lua_State *L);
int luaopen_core_time(lua_State *L);
int luaopen_core_pg(lua_State *L);
int luaopen_core_auditchain(lua_State *L);

/* The Lua state's allocator (core/mem.c): counts bytes, honours the
** ceiling core.mem sets. */
void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
