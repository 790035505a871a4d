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
** results onto the coroutine's stack (returns how many), then resume.
** Errors inside the coroutine are routed to the error handler. */
typedef int (*sb_push_fn)(lua_State *co, void *ud);
void sb_resume_ref(int ref, sb_push_fn push, void *ud);

/* [-(nargs+1), +0, -] Start the function below nargs arguments on the
** stack of L in a new coroutine and run it until it first yields. */
void sb_spawn(lua_State *L, int nargs);

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

/* [-0, +2, m] nil and "what: reason" (or "reason" when what is NULL),
** the reason being strerror(err) in lower case. */
int sb_push_errno(lua_State *L, const char *what, int err);

/* A message handler for lua_pcall: the error message (or a note on a
** non-string error object) with a traceback. */
int sb_traceback(lua_State *L);

int sb_credential_basic(lua_State *L, int idx, const char **user, const char **secret);

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
int luaopen_core_jsonint(lua_State *L);

/* The Lua state's allocator (core/mem.c): counts bytes, honours the
** ceiling core.mem sets. */
void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
