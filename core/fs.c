/*
** fs.c -- core.fs: the process's file-creation mask and a file's
** permission bits, so that the server creates its data directory,
** database and log for its owner only and refuses files that others
** can read.
*/
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "core.h"

/* fs.umask(mask) -> the previous mask; mask is an integer 0..0777 */
static int
l_umask(lua_State *L)
{
  lua_Integer mask = luaL_checkinteger(L, 1);
  luaL_argcheck(L, mask >= 0 && mask <= 0777, 1, "invalid mask");
  mode_t old = umask((mode_t)mask);
  lua_pushinteger(L, (lua_Integer)old);
  return 1;
}

/* fs.mode(path) -> the permission bits (st_mode & 07777) or nil, err;
** follows symbolic links, as opening the file does */
static int
l_mode(lua_State *L)
{
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, strlen(path) == len, 1, "path contains a NUL byte");
  struct stat st;
  if (stat(path, &st) != 0)
    return sb_push_errno(L, "stat", errno);
  lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
  return 1;
}

int
luaopen_core_fs(lua_State *L)
{
  static const luaL_Reg funcs[] = {
    { "umask", l_umask },
    { "mode", l_mode },
    { NULL, NULL },
  };
  luaL_newlib(L, funcs);
  return 1;
}
