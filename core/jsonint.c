/*
** jsonint.c -- core.jsonint: the integers of a decoded JSON tree.
** lua-cjson 2.1 reads every number as a float; integers(v) turns, in
** place, each float value with no fraction strictly within +-2^53 (where
** floats are exact) into a Lua integer, in v and every table under it.
** Only the values are walked (JSON keys are strings); raw access, no
** metamethods. It parses nothing: cjson does.
*/
#include "core.h"

/* deeper than cjson's decode_max_depth (64): a cycle or a tree not from
** the decoder raises instead of recursing without end */
#define MAX_DEPTH 200

static const lua_Number LIMIT = 9007199254740992.0; /* 2^53 */

static void
walk(lua_State *L, int depth)
{
  if (depth > MAX_DEPTH)
    luaL_error(L, "jsonint.integers: tables nested deeper than %d (a cycle?)", MAX_DEPTH);
  luaL_checkstack(L, 4, "jsonint.integers");
  int t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, t) != 0) {
    int vt = lua_type(L, -1);
    if (vt == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number x = lua_tonumber(L, -1);
      lua_Integer i;
      if (x > -LIMIT && x < LIMIT && lua_numbertointeger(x, &i) && (lua_Number)i == x) {
        /* assigning to an existing field during lua_next is allowed */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushinteger(L, i);
        lua_rawset(L, t);
        continue;
      }
    } else if (vt == LUA_TTABLE) {
      walk(L, depth + 1);
    }
    lua_pop(L, 1);
  }
}

/* jsonint.integers(v) -> v; v's tables converted in place, a float v
** itself returned as an integer when it is one */
static int
l_integers(lua_State *L)
{
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (lua_type(L, 1) == LUA_TTABLE) {
    walk(L, 1);
  } else if (lua_type(L, 1) == LUA_TNUMBER && !lua_isinteger(L, 1)) {
    lua_Number x = lua_tonumber(L, 1);
    lua_Integer i;
    if (x > -LIMIT && x < LIMIT && lua_numbertointeger(x, &i) && (lua_Number)i == x)
      lua_pushinteger(L, i);
  }
  return 1;
}

int
luaopen_core_jsonint(lua_State *L)
{
  static const luaL_Reg funcs[] = {
    { "integers", l_integers },
    { NULL, NULL },
  };
  luaL_newlib(L, funcs);
  return 1;
}
