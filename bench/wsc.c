/* WebSocket clients on libwebsockets' client, on the caller's libevent
 * base (LWS_SERVER_OPTION_LIBEVENT + foreign_loops, no listening).
 *
 * lws makes the connection, the upgrade handshake, reads and parses the
 * server's frames and answers pings. Outgoing frames are built here and
 * written with LWS_WRITE_RAW: lws_write(LWS_WRITE_TEXT) on a client reads
 * 4 bytes from /dev/urandom for every frame's mask (one extra syscall per
 * message) and writes one frame per syscall, which would make the load
 * generator, not the router, the bottleneck for small messages. Here every
 * frame is masked (RFC 6455 5.3: a client must mask) with a key from a
 * xorshift generator, and all frames queued on a connection leave in one
 * write per WRITEABLE callback. */
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct lws_context *context;
static uint64_t mask_state = 0x9e3779b97f4a7c15ull;
long wsc_live;

static uint32_t next_mask(void)
{
	mask_state ^= mask_state << 13;
	mask_state ^= mask_state >> 7;
	mask_state ^= mask_state << 17;
	return (uint32_t)(mask_state >> 16);
}

static void out_reserve(struct wsc *c, size_t more)
{
	size_t need = LWS_PRE + c->out_len + more;

	if (need <= c->out_cap)
		return;
	size_t cap = c->out_cap ? c->out_cap : 1024;
	while (cap < need)
		cap *= 2;
	c->out = realloc(c->out, cap);
	if (c->out == NULL) {
		fprintf(stderr, "mr-load: out of memory\n");
		exit(2);
	}
	c->out_cap = cap;
}

void wsc_frame(struct wsc *c, const char *payload, size_t len)
{
	unsigned char *p;
	unsigned char key[4];
	uint32_t k = next_mask();
	size_t i = 0;

	out_reserve(c, len + 14);
	p = c->out + LWS_PRE + c->out_len;
	*p++ = 0x81; /* FIN, text */
	if (len < 126) {
		*p++ = (unsigned char)(0x80 | len);
	} else if (len < 65536) {
		*p++ = 0x80 | 126;
		*p++ = (unsigned char)(len >> 8);
		*p++ = (unsigned char)len;
	} else {
		*p++ = 0x80 | 127;
		for (int s = 56; s >= 0; s -= 8)
			*p++ = (unsigned char)((uint64_t)len >> s);
	}
	memcpy(key, &k, 4);
	memcpy(p, key, 4);
	p += 4;
	for (; i + 4 <= len; i += 4) {
		uint32_t w;
		memcpy(&w, payload + i, 4);
		w ^= k;
		memcpy(p + i, &w, 4);
	}
	for (; i < len; i++)
		p[i] = (unsigned char)payload[i] ^ key[i & 3];
	p += len;
	c->out_len = (size_t)(p - (c->out + LWS_PRE));
}

void wsc_want_write(struct wsc *c)
{
	if (c->want_write || c->wsi == NULL || c->state != WSC_OPEN)
		return;
	c->want_write = 1;
	lws_callback_on_writable(c->wsi);
}

void wsc_close(struct wsc *c)
{
	if (c->state != WSC_OPEN || c->closing)
		return;
	c->closing = 1;
	c->want_write = 0;
	wsc_want_write(c);
}

void wsc_free_buffers(struct wsc *c)
{
	free(c->out);
	free(c->rx);
	c->out = NULL;
	c->rx = NULL;
	c->out_len = c->out_cap = c->rx_len = c->rx_cap = 0;
}

static void closed(struct wsc *c, int was_open)
{
	c->state = WSC_CLOSED;
	c->wsi = NULL;
	c->want_write = 0;
	c->out_len = 0;
	c->rx_len = 0;
	wsc_live--;
	if (c->ops->on_close != NULL)
		c->ops->on_close(c, was_open);
}

/* Messages over this size are dropped (the load generator's own packets
 * are small; return_statuses for 100,000 agents is about 3 MB). */
#define RX_MAX (64u << 20)

static void on_receive(struct wsc *c, struct lws *wsi, const char *in, size_t len)
{
	int last = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;

	if (c->rx_len == 0 && !c->rx_overflow && last) {
		c->ops->on_message(c, in, len); /* the usual case: no copy */
		return;
	}
	if (!c->rx_overflow) {
		if (c->rx_len + len > RX_MAX) {
			c->rx_overflow = 1;
		} else {
			if (c->rx_len + len > c->rx_cap) {
				size_t cap = c->rx_cap ? c->rx_cap : 4096;
				while (cap < c->rx_len + len)
					cap *= 2;
				c->rx = realloc(c->rx, cap);
				if (c->rx == NULL) {
					fprintf(stderr, "mr-load: out of memory\n");
					exit(2);
				}
				c->rx_cap = cap;
			}
			memcpy(c->rx + c->rx_len, in, len);
			c->rx_len += len;
		}
	}
	if (!last)
		return;
	if (!c->rx_overflow)
		c->ops->on_message(c, c->rx, c->rx_len);
	c->rx_len = 0;
	c->rx_overflow = 0;
	if (c->rx_cap > (1u << 20)) {
		free(c->rx);
		c->rx = NULL;
		c->rx_cap = 0;
	}
}

static int on_writeable(struct wsc *c, struct lws *wsi)
{
	c->want_write = 0;
	if (!c->closing && c->ops->on_writable != NULL)
		c->ops->on_writable(c);
	if (c->out_len > 0) {
		size_t n = c->out_len;

		c->out_len = 0;
		/* A short write is kept by lws (buflist_out) and sent before
		 * the next WRITEABLE callback; only an error is negative. */
		if (lws_write(wsi, c->out + LWS_PRE, n, LWS_WRITE_RAW) < 0)
			return -1;
	}
	if (c->closing) {
		lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
		return -1;
	}
	return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason,
		    void *user, void *in, size_t len)
{
	struct wsc *c = user;

	switch (reason) {
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		if (c != NULL && c->state == WSC_CONNECTING)
			closed(c, 0);
		return 0;
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		if (c == NULL)
			return -1;
		c->state = WSC_OPEN;
		c->wsi = wsi;
		if (c->ops->on_open != NULL)
			c->ops->on_open(c);
		return 0;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		if (c != NULL && c->state == WSC_OPEN)
			on_receive(c, wsi, in, len);
		return 0;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		if (c == NULL || c->state != WSC_OPEN)
			return 0;
		return on_writeable(c, wsi);
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (c != NULL && c->state == WSC_OPEN)
			closed(c, 1);
		return 0;
	default:
		return 0;
	}
}

static const struct lws_protocols protocols[] = {
	/* rx_buffer_size: lws allocates this much per connection for the
	 * frames it hands over (4 KB; larger messages come in pieces and are
	 * reassembled above). tx_packet_size: lws_issue_raw() sends at most
	 * this much per call and buffers the rest; batches are
	 * WSC_BATCH_BYTES plus one frame. */
	{ "mr-load-agent", callback, 0, 4096, 0, NULL, 256 * 1024 },
	/* the backend receives the whole stream: lws reads at most
	 * rx_buffer_size per recv() for a connection */
	{ "mr-load-backend", callback, 0, 64 * 1024, 0, NULL, 256 * 1024 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

int wsc_init(struct event_base *base)
{
	struct lws_context_creation_info info;
	void *foreign_loops[1] = { base };

	lws_set_log_level(LLL_ERR, NULL);
	wsc_live = 0;
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_LIBEVENT;
	info.foreign_loops = foreign_loops;
	info.fd_limit_per_thread = (unsigned int)raise_fd_limit() + 16;
	/* Read up to 64 KB per recv(): fewer syscalls for the backend, which
	 * receives the whole stream. */
	info.pt_serv_buf_size = 64 * 1024;
	info.timeout_secs = 30;
	info.connect_timeout_secs = 30;
	context = lws_create_context(&info);
	return context == NULL ? -1 : 0;
}

void wsc_shutdown(void)
{
	if (context != NULL)
		lws_context_destroy(context);
	context = NULL;
}

/* No validity pings: lws would otherwise put every connection on its
 * sorted timer list (secs_since_valid_ping, 300 s by default), an O(n)
 * insertion each, quadratic when 100,000 connect. */
static const lws_retry_bo_t no_validity_checks = { 0 };

int wsc_connect(struct wsc *c, const char *host, int port, const char *src,
		int bulk)
{
	struct lws_client_connect_info ci;
	struct lws *wsi;

	memset(&ci, 0, sizeof ci);
	ci.context = context;
	ci.address = host;
	ci.port = port;
	ci.path = "/";
	ci.host = host;
	ci.origin = host;
	ci.protocol = NULL;
	ci.local_protocol_name = bulk ? "mr-load-backend" : "mr-load-agent";
	ci.userdata = c;
	/* lws binds the socket to this address before connect()
	 * (client-handshake.c, CIS_IFACE): spreading agents over
	 * 127.0.0.1-254 gives 254 x the ephemeral port range. */
	ci.iface = src;
	ci.pwsi = &c->wsi;
	ci.retry_and_idle_policy = &no_validity_checks;
	c->state = WSC_CONNECTING;
	c->closing = 0;
	c->want_write = 0;
	c->out_len = 0;
	c->rx_len = 0;
	c->rx_overflow = 0;
	wsc_live++;
	wsi = lws_client_connect_via_info(&ci);
	if (wsi == NULL && c->state == WSC_CONNECTING)
		closed(c, 0);
	return 0;
}
