/* core.vault -- placeholder until the module lands. */
#include "core.h"

int
luaopen_core_vault(lua_State *L)
{
  lua_newtable(L);
  return 1;
}
