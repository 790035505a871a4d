/*
** listener.c -- core.loop's Listener: loop.listen(path, mode, fn) binds a
** Unix socket (bound under a temporary name, chmod-ed, then renamed into
** place) and loop.listen_fd(fd, fn) takes one this process was given
** (systemd); each connection runs fn(stream) in a new coroutine. close
** unlinks only the socket file this listener bound.
**
** Lifetime rules (liolib / luv): every userdata is created closed before
** its resource is acquired; close is idempotent and is also __gc and
** __close; an object with an active watcher is pinned in the registry
** (self_ref) and every callback anchors it on the main stack while it runs.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include "core.h"
#include "netbuf.h"

#define LISTENER_MT "core.loop.Listener"

typedef struct {
  NbListener ln;                /* ln.fd: -1 once closed */
  int fn_ref;
  int self_ref;
  char *path;
  dev_t dev;
  ino_t ino;
} Listener;

static void
listener_release(Listener *li)
{
  if (li->ln.fd < 0)
    return;
  nb_listener_close(&li->ln);
  if (li->path != NULL) {
    struct stat st;             /* unlink only the file we bound */
    if (lstat(li->path, &st) == 0 && S_ISSOCK(st.st_mode)
        && st.st_dev == li->dev && st.st_ino == li->ino)
      unlink(li->path);
    free(li->path);
    li->path = NULL;
  }
  sb_unref(&li->fn_ref);
  sb_unref(&li->self_ref);
}

typedef struct {
  Listener *li;
  int more;             /* accept the next one */
} Accept;

/* Protected: accept one connection and run the listener's function with
** its Stream in a new coroutine. The Stream and the coroutine are made
** first: once accepted, the fd always has its owner, and nothing between
** the accept and the resume allocates. */
static int
accept_p(lua_State *L)
{
  Accept *a = lua_touserdata(L, 1);
  Listener *li = a->li;
  a->more = 0;
  lua_newthread(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, li->fn_ref);
  SbStream *s = sb_stream_new(L);
  int fd = nb_accept(&li->ln, NULL, NULL);
  if (fd < 0) {
    lua_pop(L, 3);
    a->more = fd == NB_RETRY;
    return 0;
  }
  sb_stream_attach(s, fd, 0);
  a->more = 1;
  sb_start(L, 1);
  return 0;
}

static void
accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
  (void)loop;
  (void)revents;
  Listener *li = w->data;
  sb_anchor(li->self_ref);
  Accept a = { li, 1 };
  for (int i = 0; i < NB_ACCEPT_BATCH && a.more && li->ln.fd >= 0; i++) {
    if (sb_protect(accept_p, &a, "core.loop: listener: accept (pausing 0.5 s)") != 0) {
      if (li->ln.fd >= 0)       /* out of memory: the next try would be too */
        nb_listener_pause(&li->ln, 0.5);
      break;
    }
  }
  sb_unanchor();
}

static Listener *
check_listener(lua_State *L)
{
  Listener *li = luaL_checkudata(L, 1, LISTENER_MT);
  if (li->ln.fd < 0)
    luaL_error(L, "attempt to use a closed listener");
  return li;
}

static int
listener_close(lua_State *L)
{
  listener_release(luaL_checkudata(L, 1, LISTENER_MT));
  return 0;
}

static int
listener_fd(lua_State *L)
{
  lua_pushinteger(L, check_listener(L)->ln.fd);
  return 1;
}

static int
listener_path(lua_State *L)
{
  lua_pushstring(L, check_listener(L)->path);
  return 1;
}

static int
listener_closed(lua_State *L)
{
  lua_pushboolean(L, ((Listener *)luaL_checkudata(L, 1, LISTENER_MT))->ln.fd < 0);
  return 1;
}

/* Is a server answering on the socket file at addr? */
static int
socket_is_live(const struct sockaddr_un *addr)
{
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  int r = connect(fd, (const struct sockaddr *)addr, sizeof *addr);
  int live = r == 0 || errno == EAGAIN || errno == EINPROGRESS;
  close(fd);
  return live;
}

int
sb_loop_listen(lua_State *L)
{
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  lua_Integer mode = luaL_checkinteger(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_Integer backlog = luaL_optinteger(L, 4, 511);
  luaL_argcheck(L, mode >= 0 && mode <= 07777, 2, "invalid mode");
  luaL_argcheck(L, backlog > 0 && backlog <= 65535, 4, "invalid backlog");
  Listener *li = lua_newuserdatauv(L, sizeof *li, 0);
  memset(li, 0, sizeof *li);
  nb_listener_init(&li->ln, accept_cb, li, "listener");
  li->fn_ref = li->self_ref = LUA_NOREF;
  luaL_setmetatable(L, LISTENER_MT);

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  if (strlen(path) != plen)
    return sb_pushfail(L, "invalid socket path: it contains a NUL byte");
  if (plen == 0 || plen >= sizeof addr.sun_path)
    return sb_pushfail(L, "invalid socket path");
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path, plen);

  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return sb_pushfail(L, "path exists and is not a socket");
    if (socket_is_live(&addr))
      return sb_pushfail(L, "socket is in use by another server");
    if (unlink(path) != 0)
      return sb_push_errno(L, "unlink stale socket", errno);
  } else if (errno != ENOENT) {
    return sb_push_errno(L, "stat", errno);
  }

  char *pcopy = strdup(path);
  if (pcopy == NULL)
    return sb_pushfail(L, "out of memory");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    free(pcopy);
    return sb_push_errno(L, "socket", errno);
  }
  li->ln.fd = fd;
  /* Bind a temporary name with no permission at all, chmod it, listen,
  ** then rename it into place: the socket never has a wider mode than
  ** asked, and it appears at its path only once it has its mode and
  ** accepts. A path too long for the temporary name is bound in place. */
  struct sockaddr_un tmp = addr;
  int n = snprintf(tmp.sun_path, sizeof tmp.sun_path, "%s.%ld~", path, (long)getpid());
  int staged = n > 0 && (size_t)n < sizeof tmp.sun_path;
  if (!staged)
    tmp = addr;
  else
    unlink(tmp.sun_path);     /* a stale one of ours, from a reused pid */
  mode_t old = umask(0777);
  int r = bind(fd, (struct sockaddr *)&tmp, sizeof tmp);
  int err = errno;
  umask(old);
  if (r != 0) {
    free(pcopy);
    listener_release(li);
    return sb_push_errno(L, "bind", err);
  }
  const char *step = NULL;
  if (chmod(tmp.sun_path, (mode_t)mode) != 0)
    step = "chmod";
  else if (listen(fd, (int)backlog) != 0)
    step = "listen";
  else if (staged && rename(tmp.sun_path, path) != 0)
    step = "rename";
  if (step != NULL) {
    err = errno;
    unlink(tmp.sun_path);
    free(pcopy);
    listener_release(li);
    return sb_push_errno(L, step, err);
  }
  li->path = pcopy;
  if (lstat(path, &st) == 0) {
    li->dev = st.st_dev;
    li->ino = st.st_ino;
  }
  sb_pin_value(L, 3, &li->fn_ref);
  sb_pin_value(L, -1, &li->self_ref);
  nb_listener_start(&li->ln);
  return 1;
}

/* loop.listen_fd(fd, fn) -> listener | nil, err: accept on a listening
** socket this process was given (systemd socket activation). The socket
** is used as it is: never bound, chmod-ed or unlinked here; close() closes
** only this process's descriptor. */
int
sb_loop_listen_fd(lua_State *L)
{
  lua_Integer fd = luaL_checkinteger(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, 1, "invalid fd");
  int accepting = 0;
  socklen_t len = sizeof accepting;
  if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0)
    return sb_push_errno(L, "listen_fd", errno);
  if (!accepting)
    return sb_pushfail(L, "listen_fd: the descriptor is not a listening socket");
  int flags = fcntl((int)fd, F_GETFL);
  if (flags < 0 || fcntl((int)fd, F_SETFL, flags | O_NONBLOCK) < 0
      || fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0)
    return sb_push_errno(L, "listen_fd", errno);
  Listener *li = lua_newuserdatauv(L, sizeof *li, 0);
  memset(li, 0, sizeof *li);
  nb_listener_init(&li->ln, accept_cb, li, "listener");
  li->fn_ref = li->self_ref = LUA_NOREF;
  luaL_setmetatable(L, LISTENER_MT);
  li->ln.fd = (int)fd;
  li->path = NULL;              /* nothing to unlink: the socket is not ours */
  sb_pin_value(L, 2, &li->fn_ref);
  sb_pin_value(L, -1, &li->self_ref);
  nb_listener_start(&li->ln);
  return 1;
}

static const luaL_Reg listener_meth[] = {
  { "close", listener_close },
  { "fd", listener_fd },
  { "path", listener_path },
  { "closed", listener_closed },
  { NULL, NULL }
};

void
sb_listener_open(lua_State *L)
{
  static const luaL_Reg meta[] = {
    { "__gc", listener_close },
    { "__close", listener_close },
    { NULL, NULL }
  };
  sb_createmeta(L, LISTENER_MT, meta, listener_meth);
}
