/* One end of the IPC socket between the supervisor and a worker: the same
 * code in both processes (the supervisor has one per worker, a worker one).
 *
 * It reads the socket into an incremental reader (core/ipc.c) and hands
 * each message to the owner's callback; it packs the owner's messages into
 * one buffer and hands that to the socket when the loop is quiet (the
 * flush policy below), so that a burst of small messages is one write; it
 * counts what the other end has not read yet (backpressure) and refuses a
 * first message that is not the expected hello of this IPC version.
 *
 * Ownership, the one rule for IPC memory: a message handed to
 * callbacks.message, and every pointer in it, is valid during that call
 * only. What must outlive it is copied before the callback returns (route.c
 * copies what it queues; the supervisor sends the actions that point into
 * the message before it returns). The peer reads nothing more while a
 * message is out, and a peer freed from its own callback goes once that
 * callback returns. */
#ifndef MR_PEER_H
#define MR_PEER_H

#include "ipc.h"

#include <event2/event.h>
#include <msgpack.h>
#include <stddef.h>

struct peer;

struct peer_callbacks {
	/* One message (the hello included, once checked). */
	void (*message)(struct peer *p, const struct ipc_message *m, void *arg);
	/* The stream is over: the other end closed it, a socket error, or a
	 * malformed message or wrong hello (why says which). Nothing more is
	 * read; the owner frees the peer. */
	void (*ended)(struct peer *p, const char *why, int malformed, void *arg);
	/* Optional: the unread output went over high_watermark (full), and
	 * then fell to the low watermark again (drained). */
	void (*full)(struct peer *p, void *arg);
	void (*drained)(struct peer *p, void *arg);
};

struct peer_options {
	size_t max_message;  /* the reader's bound of one message */
	enum ipc_type hello; /* the first message must be this, of our version */
	/* Flush policy: what is packed goes to the socket at the end of the
	 * loop turn, from an event of this priority (the lowest runs once no
	 * other event is ready); and at once when flush_bytes are packed; and
	 * flush_usec after the first packed byte at the latest (0: no timer). */
	int flush_priority;
	size_t flush_bytes;
	unsigned flush_usec;
	/* Backpressure: full() once the output the other end has not read
	 * exceeds high_watermark (0: never), drained() once it fell to
	 * low_watermark. */
	size_t high_watermark, low_watermark;
};

/* Takes fd (a connected stream socket; closed by peer_free). */
struct peer *peer_new(struct event_base *base, int fd, const struct peer_options *o,
		      const struct peer_callbacks *cb, void *arg);
void peer_free(struct peer *p);

/* Send one message: packed now, written as the flush policy says; may
 * call full(). */
void peer_send(struct peer *p, const struct ipc_message *m);
/* What is packed goes to the socket now. */
void peer_flush(struct peer *p);

/* Bytes of output the other end has not read: packed, or in the
 * bufferevent's output. */
size_t peer_unread(const struct peer *p);
/* Bytes in the bufferevent's output only (handed over, not yet written). */
size_t peer_unwritten(const struct peer *p);
/* Monotonic seconds when the other end last read some of our output (or
 * when there was none left). */
double peer_last_progress(const struct peer *p);
/* New watermarks (a reload). */
void peer_set_watermarks(struct peer *p, size_t high, size_t low);
/* Raise the reader's bound to at least max_message, never lower it: a
 * reload that lowers the limits must not refuse messages made under the
 * old ones. */
void peer_raise_max(struct peer *p, size_t max_message);

/* Read now what the socket holds and hand every message over, up to its
 * end (the other end is gone: its last words still count). The message
 * callback must not free the peer meanwhile. */
void peer_read_to_end(struct peer *p);
/* Stop reading and handing over messages (the owner found one it cannot
 * accept); output still goes. */
void peer_stop(struct peer *p);
/* Write everything out, blocking for at most `seconds` (at exit). */
void peer_finish(struct peer *p, double seconds);

#endif
