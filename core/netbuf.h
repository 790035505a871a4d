/*
** netbuf.h -- the socket plumbing core.loop and core.httpd share, below
** Lua: growable byte buffers, reading into one and writing one out over a
** nonblocking fd, and a listening socket whose accept pauses after EMFILE
** and co. Nothing here touches a lua_State; the callers keep their own
** objects, refs and error messages.
*/
#ifndef SB_NETBUF_H
#define SB_NETBUF_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <ev.h>

#define NB_READ_CHUNK   16384           /* free room before each read */
#define NB_KEEP         (256u * 1024u)  /* larger idle buffers are freed */
#define NB_ACCEPT_BATCH 64              /* accepts per listener wakeup */

/* Results other than a byte count or an fd. */
enum {
  NB_AGAIN = -1,        /* nothing now: the fd would block */
  NB_ERROR = -2,        /* the fd failed; *err holds the errno */
  NB_NOMEM = -3,        /* out of memory */
  NB_FULL = -4,         /* the output would exceed its cap */
  NB_RETRY = -5         /* accept: this one failed, try the next */
};

/* How output goes to the fd: write(2), or send(2) with MSG_NOSIGNAL. */
enum { NB_WRITE, NB_SEND };

/*
** {======================================================
** Growable byte buffers: bytes p[off .. off+len)
** =======================================================
*/

typedef struct {
  char *p;
  size_t off, len, cap;
} NbBuf;

/* Room for n more bytes at the end; 0 or -1 (out of memory). The bytes
** move to the front when that is cheap (no more of them than were
** consumed), else the allocation at least doubles. */
int nb_reserve(NbBuf *b, size_t n);

/* Append n bytes; 0 or -1 (out of memory). */
int nb_add(NbBuf *b, const char *s, size_t n);

/* The first byte, or NULL when nothing was ever allocated. */
char *nb_data(const NbBuf *b);

/* Drop the first n bytes; an emptied buffer is cleared. */
void nb_consume(NbBuf *b, size_t n);

/* Empty the buffer, keeping an allocation up to NB_KEEP for reuse. */
void nb_clear(NbBuf *b);

void nb_free(NbBuf *b);

/* }====================================================== */

/*
** {======================================================
** A nonblocking fd: input and output buffers
** =======================================================
*/

/* One read(2) into the free room of in (made at least NB_READ_CHUNK):
** the byte count, 0 at EOF, NB_AGAIN, NB_ERROR (*err) or NB_NOMEM
** (*err = ENOMEM). */
ssize_t nb_fill(NbBuf *in, int fd, int *err);

/* Write data: straight to fd while nothing is queued and fd takes it,
** the rest appended to out. Returns 0 (all written), 1 (some queued: let
** a write watcher call nb_drain), NB_ERROR (*err; nothing queued),
** NB_FULL (out would hold more than max bytes) or NB_NOMEM. */
int nb_write(NbBuf *out, int fd, int how, const char *data, size_t len,
             size_t max, int *err);

/* Write out the queued bytes: 0 (out is empty), NB_AGAIN (fd is full) or
** NB_ERROR (*err; the rest is dropped, the peer is gone). */
int nb_drain(NbBuf *out, int fd, int how, int *err);

/* "what: reason" (or "reason" when what is NULL), the reason being
** strerror(err) starting in lower case. */
void nb_errmsg(char *buf, size_t size, const char *what, int err);

/* }====================================================== */

/*
** {======================================================
** Listening sockets
** =======================================================
*/

typedef struct {
  ev_io io;             /* io.data: the owner, for its accept callback */
  ev_timer backoff;     /* accept paused after EMFILE and co. */
  int fd;               /* -1 when closed */
  const char *what;     /* names the listener in error reports */
} NbListener;

typedef void (*nb_accept_cb)(struct ev_loop *, ev_io *, int);

/* Closed (fd -1); cb is called with io.data = owner when fd is readable. */
void nb_listener_init(NbListener *l, nb_accept_cb cb, void *owner,
                      const char *what);

/* Start watching l->fd, a listening socket. */
void nb_listener_start(NbListener *l);

/* Stop accepting for secs seconds (after an error the next accept would
** repeat: EMFILE, out of memory). */
void nb_listener_pause(NbListener *l, double secs);

/* Stop the watchers and close the fd; l->fd must be open. */
void nb_listener_close(NbListener *l);

/* One accept4(2), nonblocking and close-on-exec: the new fd, NB_RETRY
** (interrupted or aborted: try the next), or NB_AGAIN (none left, or an
** error: reported, accepting paused for 0.5 s). addr and len as for
** accept4. */
int nb_accept(NbListener *l, struct sockaddr *addr, socklen_t *len);

/* }====================================================== */

#endif
