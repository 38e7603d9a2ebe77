/* mr-echo: the up/down message pattern of a Mephisto router with no
 * routing at all, on the router's own stack (one process, one libevent
 * base, libwebsockets server on it, connections accepted by an
 * evconnlistener and adopted like the router's workers do).
 *
 * A connection whose first message is alive with subject_id "mephisto" is
 * the backend (a newer one replaces it); any other is an agent, and an
 * agent's alive gets a fixed update_status answer so that a load generator
 * sees it attached. After that every message of an agent is relayed to the
 * backend, and every message of the backend to the next agent in
 * round-robin order, whatever its subject. No parsing, no timestamps, no
 * state: what remains is what this machine's kernel, libevent and lws cost
 * for the pattern, the ceiling for a router built on them.
 *
 * By default all the frames waiting for a connection leave in one write
 * per WRITEABLE callback; --one-per-write writes one frame per callback,
 * the discipline of lws's examples (and of the router's worker, ws.c). */
#include "bench.h"

#include "../core/wsframe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/listener.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum role { ROLE_NEW, ROLE_AGENT, ROLE_BACKEND };

struct econn {
	struct lws *wsi;
	enum role role;
	long agent_pos;
	char *rx;
	size_t rx_len, rx_cap;
	unsigned char *out; /* LWS_PRE, then frames from out_off to out_len */
	size_t out_off, out_len, out_cap;
};

#define OUT_MAX (256u << 20) /* a peer this far behind is closed */
#define WRITE_CHUNK (64u * 1024)

static const struct echo_opts *opts;
static struct event_base *base;
static struct lws_context *context;
static struct lws_vhost *vhost;
static struct econn *backend;
static struct econn **agents;
static long nagents, agents_cap, next_agent;
static uint64_t relayed_up, relayed_down, dropped;

static const char update_status[] =
	"{\"packet_type\":\"update_status\",\"subject_id\":\"\","
	"\"data\":{\"status\":\"none\"}}";

static void oom(void)
{
	fprintf(stderr, "mr-echo: out of memory\n");
	exit(1);
}

static void enqueue(struct econn *c, const char *msg, size_t len)
{
	size_t need = LWS_PRE + c->out_len + len + WS_FRAME_HEADER_MAX;
	unsigned char *p;

	if (c->out_len - c->out_off + len > OUT_MAX) {
		dropped++;
		return;
	}
	if (need > c->out_cap && c->out_off > 0) {
		memmove(c->out + LWS_PRE, c->out + LWS_PRE + c->out_off,
			c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
		need = LWS_PRE + c->out_len + len + WS_FRAME_HEADER_MAX;
	}
	if (need > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap < need)
			cap *= 2;
		c->out = realloc(c->out, cap);
		if (c->out == NULL)
			oom();
		c->out_cap = cap;
	}
	p = c->out + LWS_PRE + c->out_len;
	p += ws_text_frame_header(p, len);
	memcpy(p, msg, len);
	p += len;
	c->out_len = (size_t)(p - (c->out + LWS_PRE));
	lws_callback_on_writable(c->wsi);
}

static size_t frame_size(const unsigned char *f, size_t avail)
{
	size_t len = f[1] & 0x7f, hdr = 2;

	if (len == 126) {
		len = ((size_t)f[2] << 8) | f[3];
		hdr = 4;
	} else if (len == 127) {
		len = 0;
		for (int i = 2; i < 10; i++)
			len = (len << 8) | f[i];
		hdr = 10;
	}
	return hdr + len <= avail ? hdr + len : avail;
}

static int on_writeable(struct econn *c)
{
	unsigned char *start = c->out + LWS_PRE + c->out_off;
	size_t avail = c->out_len - c->out_off, n;

	if (avail == 0)
		return 0;
	n = opts->one_per_write ? frame_size(start, avail)
				: avail > WRITE_CHUNK ? WRITE_CHUNK : avail;
	/* lws keeps what the socket did not take and sends it first. */
	if (lws_write(c->wsi, start, n, LWS_WRITE_RAW) < 0)
		return -1;
	c->out_off += n;
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	else
		lws_callback_on_writable(c->wsi);
	return 0;
}

static void agent_add(struct econn *c)
{
	if (nagents == agents_cap) {
		agents_cap = agents_cap ? agents_cap * 2 : 64;
		agents = realloc(agents, (size_t)agents_cap * sizeof *agents);
		if (agents == NULL)
			oom();
	}
	c->role = ROLE_AGENT;
	c->agent_pos = nagents;
	agents[nagents++] = c;
}

static void agent_remove(struct econn *c)
{
	long pos = c->agent_pos;

	agents[pos] = agents[--nagents];
	agents[pos]->agent_pos = pos;
}

/* The first message decides what a connection is. */
static void classify(struct econn *c, const char *msg, size_t len)
{
	json_t *root = json_loadb(msg, len, 0, NULL);
	const char *type = json_string_value(json_object_get(root, "packet_type"));
	const char *subject = json_string_value(json_object_get(root, "subject_id"));
	int alive = type != NULL && strcmp(type, "alive") == 0;

	if (alive && subject != NULL && strcmp(subject, "mephisto") == 0) {
		if (backend != NULL && backend != c)
			backend->role = ROLE_NEW; /* replaced; stays connected */
		backend = c;
		c->role = ROLE_BACKEND;
	} else {
		agent_add(c);
		if (alive)
			enqueue(c, update_status, sizeof update_status - 1);
		else if (backend != NULL) {
			enqueue(backend, msg, len);
			relayed_up++;
		}
	}
	json_decref(root);
}

static void on_message(struct econn *c, const char *msg, size_t len)
{
	switch (c->role) {
	case ROLE_NEW:
		classify(c, msg, len);
		return;
	case ROLE_AGENT:
		if (backend == NULL) {
			dropped++;
			return;
		}
		enqueue(backend, msg, len);
		relayed_up++;
		return;
	case ROLE_BACKEND:
		if (nagents == 0) {
			dropped++;
			return;
		}
		enqueue(agents[next_agent++ % nagents], msg, len);
		relayed_down++;
		return;
	}
}

static int on_receive(struct econn *c, struct lws *wsi, const char *in, size_t len)
{
	int last = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;

	if (c->rx_len == 0 && last) {
		on_message(c, in, len);
		return 0;
	}
	if (c->rx_len + len > (64u << 20))
		return -1;
	if (c->rx_len + len > c->rx_cap) {
		size_t cap = c->rx_cap ? c->rx_cap : 4096;
		while (cap < c->rx_len + len)
			cap *= 2;
		c->rx = realloc(c->rx, cap);
		if (c->rx == NULL)
			oom();
		c->rx_cap = cap;
	}
	memcpy(c->rx + c->rx_len, in, len);
	c->rx_len += len;
	if (last) {
		on_message(c, c->rx, c->rx_len);
		c->rx_len = 0;
	}
	return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason,
		    void *user, void *in, size_t len)
{
	struct econn *c = user;

	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		memset(c, 0, sizeof *c);
		c->wsi = wsi;
		return 0;
	case LWS_CALLBACK_RECEIVE:
		return on_receive(c, wsi, in, len);
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return on_writeable(c);
	case LWS_CALLBACK_CLOSED:
		if (c->role == ROLE_AGENT)
			agent_remove(c);
		if (backend == c)
			backend = NULL;
		free(c->rx);
		free(c->out);
		memset(c, 0, sizeof *c);
		return 0;
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
	{ "mr-echo", callback, sizeof(struct econn), 0, 0, NULL, 0 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd,
		      struct sockaddr *addr, int socklen, void *arg)
{
	int one = 1;

	(void)l;
	(void)addr;
	(void)socklen;
	(void)arg;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (lws_adopt_socket_vhost(vhost, fd) == NULL)
		fprintf(stderr, "mr-echo: could not adopt a connection\n");
}

static void stop_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopbreak(base);
}

int echo_main(const struct echo_opts *o)
{
	struct lws_context_creation_info info;
	void *foreign_loops[1];
	struct sockaddr_in sa;
	socklen_t sl = sizeof sa;
	struct evconnlistener *listener;
	struct event *sigterm, *sigint;
	long fds = raise_fd_limit();

	opts = o;
	signal(SIGPIPE, SIG_IGN);
	base = event_base_new();
	if (base == NULL)
		return 1;
	foreign_loops[0] = base;
	lws_set_log_level(LLL_ERR, NULL);
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_LIBEVENT;
	info.foreign_loops = foreign_loops;
	info.fd_limit_per_thread = (unsigned int)fds + 16;
	info.vhost_name = "default";
	context = lws_create_context(&info);
	vhost = context ? lws_get_vhost_by_name(context, "default") : NULL;
	if (vhost == NULL) {
		fprintf(stderr, "mr-echo: cannot create the libwebsockets context\n");
		return 1;
	}
	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)o->port);
	if (inet_pton(AF_INET, o->address, &sa.sin_addr) != 1) {
		fprintf(stderr, "mr-echo: bad address '%s'\n", o->address);
		return 2;
	}
	listener = evconnlistener_new_bind(base, accept_cb, NULL,
					   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
					   LEV_OPT_CLOSE_ON_EXEC, 4096,
					   (struct sockaddr *)&sa, sizeof sa);
	if (listener == NULL) {
		fprintf(stderr, "mr-echo: cannot listen on %s:%d: %s\n", o->address, o->port,
			strerror(errno));
		return 2;
	}
	getsockname(evconnlistener_get_fd(listener), (struct sockaddr *)&sa, &sl);
	printf("mr-echo: listening on %s:%d%s\n", o->address, ntohs(sa.sin_port),
	       o->one_per_write ? " (one frame per write)" : "");
	fflush(stdout);
	sigterm = evsignal_new(base, SIGTERM, stop_cb, NULL);
	sigint = evsignal_new(base, SIGINT, stop_cb, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sigint, NULL);

	event_base_dispatch(base);

	fprintf(stderr, "mr-echo: relayed %llu up, %llu down, dropped %llu\n",
		(unsigned long long)relayed_up, (unsigned long long)relayed_down,
		(unsigned long long)dropped);
	evconnlistener_free(listener);
	lws_context_destroy(context);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(base);
	free(agents);
	return 0;
}
