/*
** main.c -- the switchboard executable: embeds Lua 5.4, preloads the
** core.* modules and runs runtime.lua with the command-line arguments.
** The project root (runtime.lua, lua/, policies/) is $SWITCHBOARD_HOME
** when set, else the executable's directory in a build tree, else the
** installed prefix's share/switchboard (see find_root).
*/
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core.h"

static int
is_file(const char *path)
{
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The runtime's files (runtime.lua, lua/, policies/):
**   $SWITCHBOARD_HOME when set;
**   else the executable's directory when runtime.lua is there (a build
**   tree: ./switchboard);
**   else <the executable's directory>/../share/switchboard (an installed
**   prefix, wherever it was installed: /usr, /usr/local, a DESTDIR).
** The executable is found through /proc/self/exe, never the working
** directory or argv[0]. */
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
  char probe[PATH_MAX];
  int len = snprintf(probe, sizeof probe, "%s/runtime.lua", dir);
  if (len > 0 && (size_t)len < sizeof probe && is_file(probe)) {
    if (strlen(dir) >= size)
      return -1;
    strcpy(out, dir);
    return 0;
  }
  /* bin/../share/switchboard, without the "..": paths in messages stay plain */
  char prefix[PATH_MAX];
  if (strlen(dir) >= sizeof prefix)
    return -1;
  strcpy(prefix, dir);
  const char *base = dirname(prefix);
  len = snprintf(out, size, "%s%sshare/switchboard", base,
                 strcmp(base, "/") == 0 ? "" : "/");
  if (len < 0 || (size_t)len >= size)
    return -1;
  len = snprintf(probe, sizeof probe, "%s/runtime.lua", out);
  if (len < 0 || (size_t)len >= sizeof probe || !is_file(probe))
    return -1;
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
    fprintf(stderr, "switchboard: cannot find runtime.lua next to the executable or in"
            " ../share/switchboard (set SWITCHBOARD_HOME)\n");
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
