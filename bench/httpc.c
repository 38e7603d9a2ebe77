/* HTTP/1.1 keep-alive clients for the register scenario: each client
 * POSTs /request_agent, waits for the answer, and POSTs again on the same
 * connection.
 *
 * These are plain non-blocking sockets with libevent bufferevents, not the
 * lws HTTP client: in lws 4.1.6 a client HTTP connection is one
 * transaction (lws_client_connect_via_info per request); reusing the
 * socket goes through its pipelining queue (LCCSCF_PIPELINE, keep_warm_secs)
 * and a POST body needs the CLIENT_HTTP_WRITEABLE dance, which adds a
 * connect-info setup and several callbacks per request on the client side
 * of a benchmark whose point is the server's rate. A bufferevent client is
 * one write and one read per request, and its keep-alive is explicit. */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

enum { ST_CONNECTING, ST_IDLE, ST_HEAD, ST_BODY, ST_CHUNKS };

struct client {
	struct bufferevent *bev;
	int idx;
	int state;
	int status;
	int chunked, close_after;
	size_t content_length;
	uint64_t sent_ns;
	uint64_t nreq;
};

static struct event_base *base;
static struct client *clients;
static int nclients, spread_src, stopping;
static struct sockaddr_in dest;
static char host_header[160];
static struct httpc_stats *st;

static void client_open(struct client *c);

static void send_request(struct client *c)
{
	char body[256], head[256];
	int blen, hlen;

	if (stopping) {
		c->state = ST_IDLE;
		return;
	}
	blen = snprintf(body, sizeof body,
			"{\"provider_data\":{\"worker_name\":\"load-%d-%llu\","
			"\"assignment_id\":\"A%d\",\"hit_id\":\"H%d\"},"
			"\"client_timestamp\":%.3f}",
			c->idx, (unsigned long long)c->nreq, c->idx, c->idx, clock_epoch());
	hlen = snprintf(head, sizeof head,
			"POST /request_agent HTTP/1.1\r\nHost: %s\r\n"
			"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
			host_header, blen);
	evbuffer_add(bufferevent_get_output(c->bev), head, (size_t)hlen);
	evbuffer_add(bufferevent_get_output(c->bev), body, (size_t)blen);
	c->nreq++;
	c->sent_ns = now_mono_ns();
	c->state = ST_HEAD;
	st->sent++;
}

static void complete(struct client *c, int body_ok)
{
	uint64_t ns = now_mono_ns() - c->sent_ns;

	st->done++;
	if (c->status != 200)
		st->bad_status++;
	else if (!body_ok)
		st->bad_body++;
	else
		st->ok++;
	if (st->measuring) {
		st->window_done++;
		hist_add(&st->lat, ns);
	}
	if (c->close_after) {
		bufferevent_free(c->bev);
		c->bev = NULL;
		st->reconnects++;
		client_open(c);
		return;
	}
	send_request(c);
}

/* Parse the status line and the headers we care about. */
static void parse_head(struct client *c, const char *h, size_t len)
{
	const char *p, *end = h + len;

	c->status = 0;
	c->content_length = 0;
	c->chunked = 0;
	c->close_after = 0;
	if (len > 12 && strncmp(h, "HTTP/1.", 7) == 0)
		c->status = atoi(h + 9);
	for (p = memchr(h, '\n', len); p != NULL && p + 1 < end;
	     p = memchr(p + 1, '\n', (size_t)(end - p - 1))) {
		const char *line = p + 1;
		size_t rest = (size_t)(end - line);

		if (rest > 15 && strncasecmp(line, "content-length:", 15) == 0)
			c->content_length = strtoul(line + 15, NULL, 10);
		else if (rest > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0)
			c->chunked = memmem(line, rest < 64 ? rest : 64, "chunked", 7) != NULL;
		else if (rest > 11 && strncasecmp(line, "connection:", 11) == 0)
			c->close_after = memmem(line, rest < 64 ? rest : 64, "close", 5) != NULL;
	}
}

static int body_is_details(struct evbuffer *in, size_t len)
{
	const char *b = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);

	return b != NULL && memmem(b, len, "agent_details", 13) != NULL;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct client *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		size_t avail = evbuffer_get_length(in);

		if (c->state == ST_HEAD) {
			struct evbuffer_ptr pos = evbuffer_search(in, "\r\n\r\n", 4, NULL);
			size_t hlen;

			if (pos.pos < 0) {
				if (avail > 65536)
					goto broken;
				return;
			}
			hlen = (size_t)pos.pos + 4;
			parse_head(c, (const char *)evbuffer_pullup(in, (ev_ssize_t)hlen), hlen);
			evbuffer_drain(in, hlen);
			c->state = c->chunked ? ST_CHUNKS : ST_BODY;
			continue;
		}
		if (c->state == ST_BODY) {
			int ok;

			if (avail < c->content_length)
				return;
			ok = body_is_details(in, c->content_length);
			evbuffer_drain(in, c->content_length);
			complete(c, ok);
			if (c->bev != bev)
				return; /* reconnected */
			continue;
		}
		if (c->state == ST_CHUNKS) {
			/* Not expected from a Mephisto router (they send
			 * Content-Length), handled anyway: skip chunks until the
			 * last one; the body is not checked. */
			size_t n;
			char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
			size_t size;

			if (line == NULL)
				return;
			size = strtoul(line, NULL, 16);
			free(line);
			if (size == 0) {
				line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
				free(line);
				complete(c, 1);
				if (c->bev != bev)
					return;
				continue;
			}
			if (evbuffer_get_length(in) < size + 2)
				goto broken; /* simplification: whole chunks only */
			evbuffer_drain(in, size + 2);
			continue;
		}
		if (avail > 0)
			goto broken; /* bytes nobody asked for */
		return;
	}
broken:
	st->errors++;
	bufferevent_free(c->bev);
	c->bev = NULL;
	st->reconnects++;
	client_open(c);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct client *c = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		send_request(c);
		return;
	}
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (c->state != ST_IDLE)
			st->errors++;
		bufferevent_free(c->bev);
		c->bev = NULL;
		if (!stopping) {
			st->reconnects++;
			client_open(c);
		}
	}
}

static void client_open(struct client *c)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	c->state = ST_CONNECTING;
	if (fd < 0) {
		st->errors++;
		return;
	}
	if (spread_src) {
		struct sockaddr_in src;

		memset(&src, 0, sizeof src);
		src.sin_family = AF_INET;
		src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(c->idx % 254));
		if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
			close(fd);
			st->errors++;
			return;
		}
	}
	c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(c->bev, read_cb, NULL, event_cb, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&dest, sizeof dest) < 0) {
		bufferevent_free(c->bev);
		c->bev = NULL;
		st->errors++;
	}
}

int httpc_start(struct event_base *b, const char *host, int port, int n,
		int spread, struct httpc_stats *stats)
{
	base = b;
	st = stats;
	nclients = n;
	spread_src = spread;
	stopping = 0;
	memset(&dest, 0, sizeof dest);
	dest.sin_family = AF_INET;
	dest.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &dest.sin_addr) != 1) {
		fprintf(stderr, "mr-load: register needs an IPv4 address, not '%s'\n", host);
		return -1;
	}
	snprintf(host_header, sizeof host_header, "%s:%d", host, port);
	clients = calloc((size_t)n, sizeof *clients);
	if (clients == NULL)
		return -1;
	for (int i = 0; i < n; i++) {
		clients[i].idx = i;
		client_open(&clients[i]);
	}
	return 0;
}

void httpc_stop(void)
{
	stopping = 1;
}

long httpc_outstanding(void)
{
	long busy = 0;

	for (int i = 0; i < nclients; i++)
		if (clients[i].bev != NULL &&
		    (clients[i].state == ST_HEAD || clients[i].state == ST_BODY ||
		     clients[i].state == ST_CHUNKS))
			busy++;
	return busy;
}

void httpc_free(void)
{
	for (int i = 0; i < nclients; i++)
		if (clients[i].bev != NULL)
			bufferevent_free(clients[i].bev);
	free(clients);
	clients = NULL;
	nclients = 0;
}
