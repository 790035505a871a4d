/*
** notify.c -- core.notify: the service manager's side of a systemd
** service, through libsystemd (sd-daemon): the sockets it passes
** (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES, taken as they are), the
** notification socket (NOTIFY_SOCKET: READY=1, RELOADING=1, STOPPING=1,
** WATCHDOG=1, STATUS=...) and the watchdog interval (WATCHDOG_USEC,
** WATCHDOG_PID). Outside systemd every function answers "nothing": no
** sockets, notifications not sent, no watchdog.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "core.h"

/* notify.listen_fds() -> { { fd = n, name = "agent" }, ... } in the order
** given; the variables are unset so that nothing started later takes
** them for its own. A name missing from LISTEN_FDNAMES is "unknown", as
** systemd says. */
static int
l_listen_fds(lua_State *L)
{
  char **names = NULL;
  int n = sd_listen_fds_with_names(1, &names);
  if (n < 0)
    return sb_push_errno(L, "LISTEN_FDS", -n);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, SD_LISTEN_FDS_START + i);
    lua_setfield(L, -2, "fd");
    lua_pushstring(L, names != NULL && names[i] != NULL ? names[i] : "unknown");
    lua_setfield(L, -2, "name");
    lua_rawseti(L, -2, i + 1);
  }
  if (names != NULL) {
    for (int i = 0; i < n; i++)
      free(names[i]);
    free(names);
  }
  return 1;
}

/* notify.send(state) -> true (sent) | false (no NOTIFY_SOCKET) | nil, err.
** state: newline-separated assignments such as "READY=1". */
static int
l_send(lua_State *L)
{
  size_t len;
  const char *state = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, strlen(state) == len && len > 0, 1, "empty state or a NUL byte");
  int r = sd_notify(0, state);
  if (r < 0)
    return sb_push_errno(L, "sd_notify", -r);
  lua_pushboolean(L, r > 0);
  return 1;
}

/* notify.watchdog() -> the watchdog interval in seconds, or nil when the
** service manager expects no keep-alive from this process. */
static int
l_watchdog(lua_State *L)
{
  uint64_t usec = 0;
  int r = sd_watchdog_enabled(0, &usec);
  if (r <= 0 || usec == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushnumber(L, (lua_Number)usec / 1e6);
  return 1;
}

/* notify.monotonic_usec() -> CLOCK_MONOTONIC in microseconds, for
** "RELOADING=1\nMONOTONIC_USEC=..." (systemd >= 253, Type=notify-reload). */
static int
l_monotonic_usec(lua_State *L)
{
  struct timespec ts;
  if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
    return sb_push_errno(L, "clock_gettime", errno);
  lua_pushinteger(L, (lua_Integer)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
  return 1;
}

/* notify.is_unix_listener(fd) -> true when fd is a listening AF_UNIX
** stream socket (what an agent or admin socket unit passes). */
static int
l_is_unix_listener(lua_State *L)
{
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "invalid fd");
  int r = sd_is_socket_unix((int)fd, SOCK_STREAM, 1, NULL, 0);
  if (r < 0)
    return sb_push_errno(L, "sd_is_socket_unix", -r);
  lua_pushboolean(L, r > 0);
  return 1;
}

int
luaopen_core_notify(lua_State *L)
{
  static const luaL_Reg funcs[] = {
    { "listen_fds", l_listen_fds },
    { "send", l_send },
    { "watchdog", l_watchdog },
    { "monotonic_usec", l_monotonic_usec },
    { "is_unix_listener", l_is_unix_listener },
    { NULL, NULL },
  };
  luaL_newlib(L, funcs);
  return 1;
}
