/*
** netbuf.c -- byte buffers over nonblocking fds and listening sockets,
** shared by core.loop (Unix streams) and core.httpd (HTTP connections).
** No Lua code runs here; the only core.h calls are sb_loop and
** sb_report_error.
*/
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"
#include "netbuf.h"

#define NB_MIN_CAP 256

/*
** {======================================================
** Byte buffers
** =======================================================
*/

int
nb_reserve(NbBuf *b, size_t n)
{
  if (b->cap - b->off - b->len >= n)
    return 0;
  if (b->off > 0 && b->off >= b->len && b->cap - b->len >= n) {
    memmove(b->p, b->p + b->off, b->len);   /* cheap: len <= off */
    b->off = 0;
    return 0;
  }
  if (b->cap > SIZE_MAX / 2)
    return -1;
  size_t cap = b->cap ? b->cap * 2 : NB_MIN_CAP;   /* at least double */
  while (cap - b->len < n) {
    if (cap > SIZE_MAX / 2)
      return -1;
    cap *= 2;
  }
  char *p;
  if (b->off == 0) {
    p = realloc(b->p, cap);
    if (p == NULL)
      return -1;
  } else {                      /* copy only the live bytes */
    p = malloc(cap);
    if (p == NULL)
      return -1;
    memcpy(p, b->p + b->off, b->len);
    free(b->p);
  }
  b->p = p;
  b->off = 0;
  b->cap = cap;
  return 0;
}

int
nb_add(NbBuf *b, const char *s, size_t n)
{
  if (n == 0)
    return 0;
  if (nb_reserve(b, n) != 0)
    return -1;
  memcpy(b->p + b->off + b->len, s, n);
  b->len += n;
  return 0;
}

char *
nb_data(const NbBuf *b)
{
  return b->p != NULL ? b->p + b->off : NULL;
}

void
nb_free(NbBuf *b)
{
  free(b->p);
  b->p = NULL;
  b->off = b->len = b->cap = 0;
}

void
nb_clear(NbBuf *b)
{
  b->off = b->len = 0;
  if (b->cap > NB_KEEP)
    nb_free(b);
}

void
nb_consume(NbBuf *b, size_t n)
{
  b->off += n;
  b->len -= n;
  if (b->len == 0)
    nb_clear(b);
}

/* }====================================================== */

/*
** {======================================================
** Input and output over a nonblocking fd
** =======================================================
*/

ssize_t
nb_fill(NbBuf *in, int fd, int *err)
{
  if (nb_reserve(in, NB_READ_CHUNK) != 0) {
    *err = ENOMEM;
    return NB_NOMEM;
  }
  for (;;) {
    char *at = in->p + in->off + in->len;
    ssize_t n = read(fd, at, in->cap - in->off - in->len);
    if (n > 0) {
      in->len += (size_t)n;
      return n;
    }
    if (n == 0)
      return 0;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return NB_AGAIN;
    *err = errno;
    return NB_ERROR;
  }
}

static ssize_t
put(int fd, int how, const char *data, size_t len)
{
  if (how == NB_SEND)
    return send(fd, data, len, MSG_NOSIGNAL);
  return write(fd, data, len);
}

int
nb_write(NbBuf *out, int fd, int how, const char *data, size_t len,
         size_t max, int *err)
{
  size_t done = 0;
  if (out->len == 0) {
    while (done < len) {
      ssize_t n = put(fd, how, data + done, len - done);
      if (n > 0) {
        done += (size_t)n;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        break;
      } else {
        *err = n < 0 ? errno : EIO;
        return NB_ERROR;
      }
    }
  }
  size_t rem = len - done;
  if (rem == 0)
    return 0;
  if (rem > max || out->len > max - rem)
    return NB_FULL;
  if (nb_add(out, data + done, rem) != 0)
    return NB_NOMEM;
  return 1;
}

int
nb_drain(NbBuf *out, int fd, int how, int *err)
{
  while (out->len > 0) {
    ssize_t n = put(fd, how, nb_data(out), out->len);
    if (n > 0) {
      nb_consume(out, (size_t)n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      return NB_AGAIN;
    } else {
      *err = n < 0 ? errno : EIO;
      nb_clear(out);
      return NB_ERROR;
    }
  }
  return 0;
}

void
nb_errmsg(char *buf, size_t size, const char *what, int err)
{
  if (what != NULL)
    snprintf(buf, size, "%s: %s", what, strerror(err));
  else
    snprintf(buf, size, "%s", strerror(err));
  size_t off = what != NULL ? strlen(what) + 2 : 0;
  if (off < size && buf[off] >= 'A' && buf[off] <= 'Z')
    buf[off] = (char)(buf[off] - 'A' + 'a');
}

/* }====================================================== */

/*
** {======================================================
** Listening sockets
** =======================================================
*/

static void
backoff_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
  (void)revents;
  NbListener *l = w->data;
  if (l->fd >= 0)
    ev_io_start(loop, &l->io);
}

void
nb_listener_init(NbListener *l, nb_accept_cb cb, void *owner,
                 const char *what)
{
  l->fd = -1;
  l->what = what;
  ev_io_init(&l->io, cb, 0, EV_READ);
  ev_timer_init(&l->backoff, backoff_cb, 0., 0.);
  l->io.data = owner;
  l->backoff.data = l;
}

void
nb_listener_start(NbListener *l)
{
  ev_io_set(&l->io, l->fd, EV_READ);
  ev_io_start(sb_loop(), &l->io);
}

void
nb_listener_pause(NbListener *l, double secs)
{
  ev_io_stop(sb_loop(), &l->io);
  ev_timer_stop(sb_loop(), &l->backoff);
  ev_timer_set(&l->backoff, secs, 0.);
  ev_timer_start(sb_loop(), &l->backoff);
}

void
nb_listener_close(NbListener *l)
{
  ev_io_stop(sb_loop(), &l->io);
  ev_timer_stop(sb_loop(), &l->backoff);
  close(l->fd);
  l->fd = -1;
}

int
nb_accept(NbListener *l, struct sockaddr *addr, socklen_t *len)
{
  int fd = accept4(l->fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd >= 0)
    return fd;
  int err = errno;
  if (err == EINTR || err == ECONNABORTED)
    return NB_RETRY;
  if (err == EAGAIN || err == EWOULDBLOCK)
    return NB_AGAIN;
  char msg[160];
  snprintf(msg, sizeof msg, "%s: accept: %s (pausing 0.5 s)", l->what,
           strerror(err));
  sb_report_error(msg);
  nb_listener_pause(l, 0.5);
  return NB_AGAIN;
}

/* }====================================================== */
