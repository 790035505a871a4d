/*
** main.c -- the switchboard executable: embeds Lua 5.4, preloads the
** core.* modules and runs runtime.lua with the command-line arguments.
** The project root (runtime.lua, lua/, policies/) is the directory of the
** executable, or $SWITCHBOARD_HOME when set. The Lua state itself is
** built by sb_new_state (init.c).
*/
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core.h"

static int
find_root(char *out, size_t size)
{
  const char *home = getenv("SWITCHBOARD_HOME");
  if (home != NULL && home[0] != '\0') {
    if (strlen(home) >= size)
      return -1;
    strcpy(out, home);
    return 0;
  }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0)
    return -1;
  exe[n] = '\0';
  const char *dir = dirname(exe);
  if (strlen(dir) >= size)
    return -1;
  strcpy(out, dir);
  return 0;
}

/* No core files and no same-uid ptrace: a crash must not write the
** opened credentials to disk. */
static void
harden(void)
{
  struct rlimit rl = { 0, 0 };
  setrlimit(RLIMIT_CORE, &rl);
  if (getenv("SWITCHBOARD_DUMPABLE") == NULL)
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

int
main(int argc, char **argv)
{
  char root[PATH_MAX];
  if (find_root(root, sizeof root) != 0) {
    fprintf(stderr, "switchboard: cannot find the project root\n");
    return 1;
  }
  harden();
  signal(SIGPIPE, SIG_IGN);

  lua_State *L = sb_new_state(root);
  if (L == NULL) {
    fprintf(stderr, "switchboard: cannot create the Lua state\n");
    return 1;
  }

  /* arg table as the standalone interpreter builds it */
  lua_createtable(L, argc, 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_setglobal(L, "arg");

  lua_pushcfunction(L, sb_traceback);
  char script[PATH_MAX + 16];
  snprintf(script, sizeof script, "%s/runtime.lua", root);
  int rc = 1;
  if (luaL_loadfile(L, script) != LUA_OK) {
    fprintf(stderr, "switchboard: %s\n", lua_tostring(L, -1));
  } else {
    lua_pushstring(L, root);
    for (int i = 1; i < argc; i++)
      lua_pushstring(L, argv[i]);
    if (lua_pcall(L, argc, 1, 1) != LUA_OK) {
      fprintf(stderr, "switchboard: %s\n", lua_tostring(L, -1));
    } else {
      rc = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
    }
  }
  fflush(stdout);
  lua_close(L);
  ev_loop_destroy(EV_DEFAULT);
  return rc;
}
