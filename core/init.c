/*
** init.c -- the Lua state every entry point embeds (the switchboard
** executable and the fuzz harness): the counting allocator, the standard
** libraries, the core.* modules preloaded, and package.path starting at
** the project's lua/ directory.
*/
#include <stdio.h>

#include <lualib.h>

#include "core.h"

static void
preload(lua_State *L, const char *name, lua_CFunction open)
{
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

static int
panic(lua_State *L)
{
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "switchboard: unprotected Lua error: %s\n", msg ? msg : "?");
  return 0;
}

lua_State *
sb_new_state(const char *root)
{
  lua_State *L = lua_newstate(sb_alloc, NULL);
  if (L == NULL)
    return NULL;
  lua_atpanic(L, panic);
  sb_set_main(L);
  luaL_openlibs(L);
  /* the core modules, one line each */
  preload(L, "core.loop", luaopen_core_loop);
  preload(L, "core.http", luaopen_core_http);
  preload(L, "core.vault", luaopen_core_vault);
  preload(L, "core.store", luaopen_core_store);
  preload(L, "core.httpd", luaopen_core_httpd);
  preload(L, "core.mem", luaopen_core_mem);
  preload(L, "core.phone", luaopen_core_phone);
  preload(L, "core.fs", luaopen_core_fs);
  preload(L, "core.notify", luaopen_core_notify);
  preload(L, "core.jose", luaopen_core_jose);
  preload(L, "core.jsonint", luaopen_core_jsonint);
  preload(L, "core.time", luaopen_core_time);
  preload(L, "core.pg", luaopen_core_pg);
  preload(L, "core.auditchain", luaopen_core_auditchain);

  /* package.path: the project's lua/ first, then the system's */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s/?.lua;", root, root,
                  root);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  return L;
}
