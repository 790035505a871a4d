/*
** mem.c -- core.mem: the Lua state's allocator, with a byte count and an
** optional ceiling. The policy engine raises the ceiling around each
** policy it runs, so a policy that tries to allocate without bound
** (string.rep of a huge count, a table that never stops growing) gets
** "not enough memory" instead of taking the process down. Policies run
** synchronously, so while the ceiling is set nothing else allocates.
*/
#include <stdint.h>
#include <stdlib.h>

#include "core.h"

static size_t used = 0;
static size_t ceiling = SIZE_MAX;

void *
sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
  (void)ud;
  size_t old = ptr != NULL ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    used -= old;
    return NULL;
  }
  if (nsize > old && used - old + nsize > ceiling)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (p != NULL)
    used = used - old + nsize;
  return p;
}

/* mem.used() -> bytes the Lua state holds now */
static int
l_used(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)used);
  return 1;
}

/* mem.limit(bytes | nil) -> sets (or clears) the ceiling: at most bytes
** more than are in use now. */
static int
l_limit(lua_State *L)
{
  if (lua_isnoneornil(L, 1)) {
    ceiling = SIZE_MAX;
    return 0;
  }
  lua_Integer extra = luaL_checkinteger(L, 1);
  luaL_argcheck(L, extra >= 0, 1, "must not be negative");
  ceiling = used + (size_t)extra;
  return 0;
}

int
luaopen_core_mem(lua_State *L)
{
  static const luaL_Reg funcs[] = {
    { "used", l_used },
    { "limit", l_limit },
    { NULL, NULL },
  };
  luaL_newlib(L, funcs);
  return 1;
}
