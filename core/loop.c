/* core.loop -- placeholder until the module lands. */
#include "core.h"

int
luaopen_core_loop(lua_State *L)
{
  lua_newtable(L);
  return 1;
}
