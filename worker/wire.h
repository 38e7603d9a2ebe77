/* Packets on the wire: parse and validate what a WebSocket brought (JSON:
 * yajl for the usual packet, jansson for the rest, wire.c) into the
 * struct packet the supervisor routes, whose payload it forwards
 * untouched. */
#ifndef MR_WIRE_H
#define MR_WIRE_H

#include "../core/ipc.h"
#include "../core/packet.h"

#include <jansson.h>
#include <stddef.h>

/* Room the outgoing timestamp adds to a packet. */
#define WIRE_OUTGOING_STAMP_BYTES 64

struct wire_packet {
	/* What route.c routes, as it travels in WS_PACKET: strings point into
	 * root or after payload, packet.payload is payload. */
	struct packet packet;
	char *payload; /* compact JSON, malloc'ed */
	size_t len;
	json_t *root;  /* NULL when yajl parsed it */
};

/* Parse one WebSocket message received at time now (epoch seconds).
 * Returns 0, or -1 with the reason in why (the packet is to be dropped). */
int wire_parse(const char *text, size_t len, double now, size_t backend_max,
	       struct wire_packet *out, char *why, size_t whylen);
/* The same with jansson only: what wire_parse() falls back to for any
 * packet its fast path declines, and the reference tests compare it with. */
int wire_parse_json(const char *text, size_t len, double now, size_t backend_max,
		    struct wire_packet *out, char *why, size_t whylen);
void wire_packet_free(struct wire_packet *p);

/* Free the fast path's buffers (at exit: they are reused between packets). */
void wire_free_all(void);

/* Now, for the timestamps that go on the wire (router_incoming_timestamp,
 * router_outgoing_timestamp, /get_timestamp) and the times measured from
 * them: clock_epoch() (core/clock.h), under the protocol's name. */
double wire_now(void);

/* Write payload with "router_outgoing_timestamp" added into dst, which must
 * hold len + WIRE_OUTGOING_STAMP_BYTES bytes; returns the length. */
size_t wire_stamp_outgoing(char *dst, const char *payload, size_t len, double now);

#endif
