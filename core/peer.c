/* One end of the supervisor-worker IPC socket (see peer.h). The only file
 * of core/ on a socket (config.c reads its file, log.c writes stderr). */
#include "peer.h"

#include "clock.h"
#include "log.h"
#include "xalloc.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#define READ_CHUNK 65536

struct peer {
	struct bufferevent *bev;
	struct ipc_reader *reader;
	msgpack_sbuffer out; /* packed, not yet handed to bev */
	msgpack_packer pk;
	struct event *flush_now, *flush_late;
	struct peer_options o;
	struct peer_callbacks cb;
	void *arg;
	double progress;  /* monotonic: the other end last read some output */
	int hello_seen;
	int full;         /* full() was called, drained() not yet */
	int stopped;      /* read nothing more */
	int ended;        /* callbacks.ended was called */
	int in_callback;  /* callbacks running (nested: read_to_end in ended) */
	int free_pending; /* peer_free() from a callback: freed once it returns */
};

static void release(struct peer *p)
{
	event_free(p->flush_now);
	if (p->flush_late != NULL)
		event_free(p->flush_late);
	bufferevent_free(p->bev);
	ipc_reader_free(p->reader);
	msgpack_sbuffer_destroy(&p->out);
	free(p);
}

void peer_free(struct peer *p)
{
	if (p == NULL)
		return;
	if (p->in_callback > 0) {
		p->free_pending = 1;
		p->stopped = 1;
		bufferevent_disable(p->bev, EV_READ | EV_WRITE);
		return;
	}
	release(p);
}

/* After a callback: 1 when the peer was freed from it (do not touch p). */
static int callback_done(struct peer *p)
{
	if (--p->in_callback == 0 && p->free_pending) {
		release(p);
		return 1;
	}
	return 0;
}

/* What deliver() and pump() tell their caller. */
enum { GO_ON = 0, STOPPED = 1, GONE = -1 };

/* The stream is over: STOPPED, or GONE when the owner freed p meanwhile. */
static int end(struct peer *p, const char *why, int malformed)
{
	p->stopped = 1;
	bufferevent_disable(p->bev, EV_READ);
	if (p->ended)
		return STOPPED;
	p->ended = 1;
	p->in_callback++;
	p->cb.ended(p, why, malformed, p->arg);
	return callback_done(p) ? GONE : STOPPED;
}

/* Check the hello rule, then hand one message over. */
static int deliver(struct peer *p, const struct ipc_message *m)
{
	char why[96];

	if (!p->hello_seen) {
		uint32_t version = m->type == IPC_HELLO_WORKER ? m->hello_worker.version
							       : m->hello_supervisor.version;

		if (m->type != p->o.hello) {
			snprintf(why, sizeof why, "%s before the hello", ipc_type_name(m->type));
			return end(p, why, 1);
		}
		if (version != IPC_PROTOCOL_VERSION) {
			snprintf(why, sizeof why, "hello of IPC version %u; this side speaks %u",
				 version, IPC_PROTOCOL_VERSION);
			return end(p, why, 1);
		}
		p->hello_seen = 1;
	} else if (m->type == p->o.hello) {
		return end(p, "a second hello", 1);
	}
	p->in_callback++;
	p->cb.message(p, m, p->arg);
	if (callback_done(p))
		return GONE;
	return p->stopped ? STOPPED : GO_ON;
}

/* Hand over every whole message in bev's input: GO_ON, STOPPED or GONE. */
static int pump(struct peer *p)
{
	struct evbuffer *in = bufferevent_get_input(p->bev);
	size_t len;

	while (!p->stopped && (len = evbuffer_get_length(in)) > 0) {
		size_t chunk = len > READ_CHUNK ? READ_CHUNK : len;
		struct ipc_message m;
		char err[256];
		int rc, next;

		/* No message is out here: the reader may move its buffer. */
		evbuffer_remove(in, ipc_reader_buffer(p->reader, chunk), chunk);
		ipc_reader_consumed(p->reader, chunk);
		while ((rc = ipc_reader_next(p->reader, &m, err, sizeof err)) > 0)
			if ((next = deliver(p, &m)) != GO_ON)
				return next;
		if (rc < 0)
			return end(p, err, 1);
	}
	return p->stopped ? STOPPED : GO_ON;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	pump(arg);
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct peer *p = arg;

	(void)bev;
	if (p->full && p->out.size + peer_unwritten(p) <= p->o.low_watermark) {
		p->full = 0;
		if (p->cb.drained != NULL) {
			p->in_callback++;
			p->cb.drained(p, p->arg);
			callback_done(p);
		}
	}
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct peer *p = arg;

	(void)bev;
	if (what & BEV_EVENT_EOF)
		end(p, "closed by the other end", 0);
	else if (what & BEV_EVENT_ERROR)
		end(p, strerror(EVUTIL_SOCKET_ERROR()), 0);
}

static void output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct peer *p = arg;

	(void)buf;
	if (info->n_deleted > 0)
		p->progress = clock_monotonic();
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	peer_flush(arg);
}

struct peer *peer_new(struct event_base *base, int fd, const struct peer_options *o,
		      const struct peer_callbacks *cb, void *arg)
{
	struct peer *p = xcalloc(1, sizeof *p);

	p->o = *o;
	p->cb = *cb;
	p->arg = arg;
	p->progress = clock_monotonic();
	p->reader = ipc_reader_new(o->max_message);
	msgpack_sbuffer_init(&p->out);
	msgpack_packer_init(&p->pk, &p->out, msgpack_sbuffer_write);
	evutil_make_socket_nonblocking(fd);
	p->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	p->flush_now = evtimer_new(base, flush_cb, p);
	if (p->bev == NULL || p->flush_now == NULL)
		fatal("out of memory");
	if (o->flush_priority >= 0)
		event_priority_set(p->flush_now, o->flush_priority);
	if (o->flush_usec > 0 && (p->flush_late = evtimer_new(base, flush_cb, p)) == NULL)
		fatal("out of memory");
	bufferevent_setcb(p->bev, read_cb, write_cb, event_cb, p);
	bufferevent_setwatermark(p->bev, EV_WRITE, o->low_watermark, 0);
	evbuffer_add_cb(bufferevent_get_output(p->bev), output_cb, p);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	return p;
}

static msgpack_packer *packer(struct peer *p)
{
	if (p->out.size == 0) {
		event_active(p->flush_now, EV_TIMEOUT, 0);
		if (p->flush_late != NULL) {
			struct timeval late = { 0, (suseconds_t)p->o.flush_usec };

			evtimer_add(p->flush_late, &late);
		}
	}
	return &p->pk;
}

void peer_send(struct peer *p, const struct ipc_message *m)
{
	if (ipc_pack(packer(p), m) < 0)
		fatal("out of memory");
	if (p->o.flush_bytes > 0 && p->out.size >= p->o.flush_bytes)
		peer_flush(p);
	if (!p->full && p->o.high_watermark > 0 && peer_unread(p) > p->o.high_watermark) {
		p->full = 1;
		if (p->cb.full != NULL) {
			p->in_callback++;
			p->cb.full(p, p->arg);
			callback_done(p);
		}
	}
}

/* len bytes to the socket at once when nothing is waiting in bev (what it
 * does not take, and anything after an error, goes through bev as usual):
 * saves the loop turn and the two epoll_ctl() calls a bufferevent spends
 * per write. */
static void write_out(struct bufferevent *bev, const void *data, size_t len)
{
	evutil_socket_t fd = bufferevent_getfd(bev);
	ssize_t n = 0;

	if (fd >= 0 && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		do
			n = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			n = 0; /* EAGAIN, or an error the bufferevent will report */
	}
	if ((size_t)n < len)
		bufferevent_write(bev, (const char *)data + n, len - (size_t)n);
}

void peer_flush(struct peer *p)
{
	if (p->out.size == 0)
		return;
	if (!p->free_pending)
		write_out(p->bev, p->out.data, p->out.size);
	msgpack_sbuffer_clear(&p->out);
	if (p->flush_late != NULL)
		evtimer_del(p->flush_late);
}

size_t peer_unwritten(const struct peer *p)
{
	return evbuffer_get_length(bufferevent_get_output(p->bev));
}

size_t peer_unread(const struct peer *p)
{
	return p->out.size + peer_unwritten(p);
}

double peer_last_progress(const struct peer *p)
{
	return p->progress;
}

void peer_set_watermarks(struct peer *p, size_t high, size_t low)
{
	p->o.high_watermark = high;
	p->o.low_watermark = low;
	bufferevent_setwatermark(p->bev, EV_WRITE, low, 0);
}

void peer_raise_max(struct peer *p, size_t max_message)
{
	ipc_reader_raise_max(p->reader, max_message);
}

void peer_read_to_end(struct peer *p)
{
	struct evbuffer *in = bufferevent_get_input(p->bev);
	evutil_socket_t fd = bufferevent_getfd(p->bev);

	if (p->stopped || fd < 0)
		return;
	/* Bounded by what the socket holds: the other end is gone. A
	 * bufferevent keeps the end of its input frozen (only it may add
	 * there): evbuffer_read() fails on it, with errno 0, unless thawed. */
	if (pump(p) != GO_ON)
		return;
	for (;;) {
		int n;

		evbuffer_unfreeze(in, 0);
		n = evbuffer_read(in, fd, READ_CHUNK);
		evbuffer_freeze(in, 0);
		if (n <= 0 || pump(p) != GO_ON)
			return;
	}
}

void peer_stop(struct peer *p)
{
	p->stopped = 1;
	bufferevent_disable(p->bev, EV_READ);
}

void peer_finish(struct peer *p, double seconds)
{
	struct evbuffer *out = bufferevent_get_output(p->bev);
	evutil_socket_t fd = bufferevent_getfd(p->bev);
	struct timeval limit = { (time_t)seconds,
				 (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6) };
	int flags;

	peer_flush(p);
	if (fd < 0 || (flags = fcntl(fd, F_GETFL)) < 0)
		return;
	fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
	while (evbuffer_get_length(out) > 0 && evbuffer_write(out, fd) > 0)
		;
}
