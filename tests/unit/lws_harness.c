/* The in-process lws harness of the worker's unit tests: lws_harness.h. */
#include "lws_harness.h"

#include "../../core/log.h"
#include "../../worker/wire.h"

#include <dirent.h>
#include <errno.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct harness harness;

static struct client *clients[HARNESS_CLIENTS];

static void client_free(struct client *c);

/* ---- the recorded IPC ---- */

/* One message as the supervisor would read it: packed, then decoded from
 * its own bytes, which it points into (kept with it). */
struct record {
	msgpack_sbuffer bytes;
	msgpack_unpacked unpacked;
	struct ipc_message m;
};

static struct record **records;
static size_t nrecords, records_cap;

static void record_free(struct record *r)
{
	msgpack_unpacked_destroy(&r->unpacked);
	msgpack_sbuffer_destroy(&r->bytes);
	free(r);
}

void harness_clear(void)
{
	for (size_t i = 0; i < nrecords; i++)
		record_free(records[i]);
	nrecords = 0;
}

static void harness_send(const struct ipc_message *m)
{
	struct record *r = calloc(1, sizeof *r);
	msgpack_packer pk;
	size_t off = 0;
	char err[256];

	if (r == NULL)
		abort();
	msgpack_sbuffer_init(&r->bytes);
	msgpack_packer_init(&pk, &r->bytes, msgpack_sbuffer_write);
	msgpack_unpacked_init(&r->unpacked);
	if (ipc_pack(&pk, m) < 0 ||
	    msgpack_unpack_next(&r->unpacked, r->bytes.data, r->bytes.size, &off) !=
		    MSGPACK_UNPACK_SUCCESS ||
	    off != r->bytes.size || ipc_decode(&r->unpacked.data, &r->m, err, sizeof err) < 0) {
		/* the supervisor could not read it: a bug of the code sending */
		fprintf(stderr, "lws_harness: the worker sent %s, which does not decode\n",
			ipc_type_name(m->type));
		abort();
	}
	if (nrecords == records_cap) {
		records_cap = records_cap ? 2 * records_cap : 64;
		records = realloc(records, records_cap * sizeof *records);
		if (records == NULL)
			abort();
	}
	records[nrecords++] = r;
}

size_t harness_msg_count(void)
{
	return nrecords;
}

const struct ipc_message *harness_msg(size_t i)
{
	return i < nrecords ? &records[i]->m : NULL;
}

size_t harness_count(enum ipc_type type)
{
	size_t n = 0;

	for (size_t i = 0; i < nrecords; i++)
		n += records[i]->m.type == type;
	return n;
}

const struct ipc_message *harness_find(enum ipc_type type, size_t n)
{
	for (size_t i = 0; i < nrecords; i++)
		if (records[i]->m.type == type && n-- == 0)
			return &records[i]->m;
	return NULL;
}

const struct ipc_message *harness_last(enum ipc_type type)
{
	for (size_t i = nrecords; i-- > 0;)
		if (records[i]->m.type == type)
			return &records[i]->m;
	return NULL;
}

/* ---- the rest of the env ---- */

static void harness_flush(void)
{
	harness.flushes++;
}

static int harness_paused(void)
{
	return harness.paused;
}

static int harness_is_metrics(struct lws *wsi)
{
	for (size_t i = 0; i < HARNESS_CLIENTS; i++)
		if (clients[i] != NULL && clients[i]->wsi == wsi)
			return clients[i]->metrics;
	return 0;
}

/* ---- the context ---- */

/* worker.c's callback: the connection count, and which client's wsi is
 * gone; the rest is worker_dispatch(), guards on, as the worker serves. */
static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
		    void *in, size_t len)
{
	if (reason == LWS_CALLBACK_WSI_CREATE) {
		harness.stats.connections++;
	} else if (reason == LWS_CALLBACK_WSI_DESTROY) {
		harness.stats.connections--;
		for (size_t i = 0; i < HARNESS_CLIENTS; i++)
			if (clients[i] != NULL && clients[i]->wsi == wsi)
				clients[i]->wsi = NULL;
	}
	return worker_dispatch(wsi, reason, user, in, len, 1);
}

/* worker.c's table: WS_RX_BUFFER, WS_TX_PACKET */
static const struct lws_protocols protocols[] = {
	{ "mephisto-router", callback, sizeof(struct session), 1024, 0, NULL, 256 * 1024 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

static const lws_retry_bo_t no_validity_checks = { 0 };

static void remove_tree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	struct stat st;
	char path[1024];

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
			remove_tree(path);
		else
			unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

void harness_init(int slot)
{
	const char *tmp = getenv("TMPDIR");
	char err[256];

	if (tmp == NULL || tmp[0] == '\0')
		tmp = "/tmp";
	harness_clear();
	memset(&harness, 0, sizeof harness);
	config_defaults(&harness.cfg);
	snprintf(harness.static_dir, sizeof harness.static_dir, "%s/mr-unit-static-XXXXXX", tmp);
	snprintf(harness.upload_dir, sizeof harness.upload_dir, "%s/mr-unit-upload-XXXXXX", tmp);
	if (mkdtemp(harness.static_dir) == NULL || mkdtemp(harness.upload_dir) == NULL ||
	    config_set(&harness.cfg, "static_dir", harness.static_dir, err, sizeof err) < 0 ||
	    config_set(&harness.cfg, "upload_dir", harness.upload_dir, err, sizeof err) < 0) {
		fprintf(stderr, "lws_harness: cannot make the temporary folders\n");
		abort();
	}
	harness.env = (struct worker_env){
		.cfg = &harness.cfg, .stats = &harness.stats, .send = harness_send,
		.flush = harness_flush, .paused = harness_paused, .slot = slot,
		.is_metrics_connection = harness_is_metrics,
	};
}

void harness_static_file(const char *name, const char *text)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", harness.static_dir, name);
	f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		abort();
}

int harness_start(void)
{
	struct lws_context_creation_info info;

	log_set_level(getenv("HARNESS_TRACE") ? LOG_LVL_DEBUG : LOG_LVL_ERROR);
	lws_set_log_level(getenv("HARNESS_TRACE") ? LLL_ERR | LLL_WARN : 0, NULL);
	ws_init(&harness.env);
	http_init(&harness.env);
	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
	info.max_http_header_data = (unsigned short)(harness.cfg.max_header_bytes > 65535
						     ? 65535 : harness.cfg.max_header_bytes);
	info.retry_and_idle_policy = &no_validity_checks;
	info.vhost_name = "default";
	harness.context = lws_create_context(&info);
	if (harness.context == NULL)
		return -1;
	harness.vhost = lws_get_vhost_by_name(harness.context, "default");
	return harness.vhost != NULL ? 0 : -1;
}

void harness_stop(void)
{
	/* the clients' ends first: lws sees them hang up as it closes */
	for (size_t i = 0; i < HARNESS_CLIENTS; i++) {
		if (clients[i] != NULL && clients[i]->fd >= 0) {
			close(clients[i]->fd);
			clients[i]->fd = -1;
		}
	}
	if (harness.context != NULL)
		lws_context_destroy(harness.context); /* CLOSED callbacks: the env is still here */
	harness.context = NULL;
	for (size_t i = 0; i < HARNESS_CLIENTS; i++)
		if (clients[i] != NULL)
			client_free(clients[i]);
	ws_free_all();
	http_free_all();
	wire_free_all();
	harness_clear();
	free(records);
	records = NULL;
	records_cap = 0;
	remove_tree(harness.static_dir);
	remove_tree(harness.upload_dir);
}

/* ---- the loop ---- */

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1000 + (double)ts.tv_nsec / 1e6;
}

void harness_service(void)
{
	lws_service(harness.context, -1); /* -1: poll without waiting */
}

void harness_settle(void)
{
	for (int i = 0; i < 100; i++) {
		harness_service();
		usleep(200);
	}
}

int harness_until(int (*cond)(void *), void *arg)
{
	double deadline = now_ms() + HARNESS_WAIT_MS;

	/* at least 100 us a turn: HARNESS_WAIT_MS * 10 turns at most */
	for (long turn = 0; turn < (long)HARNESS_WAIT_MS * 10; turn++) {
		harness_service();
		if (cond(arg))
			return 1;
		if (now_ms() > deadline)
			break;
		usleep(100);
	}
	return cond(arg);
}

struct msgs_wanted {
	enum ipc_type type;
	size_t count;
};

static int msgs_there(void *arg)
{
	const struct msgs_wanted *w = arg;

	return harness_count(w->type) >= w->count;
}

int harness_wait_msgs(enum ipc_type type, size_t count)
{
	struct msgs_wanted w = { type, count };

	return harness_until(msgs_there, &w);
}

/* ---- the client ---- */

/* Unregister and free. */
static void client_free(struct client *c)
{
	for (size_t i = 0; i < HARNESS_CLIENTS; i++)
		if (clients[i] == c)
			clients[i] = NULL;
	if (c->fd >= 0)
		close(c->fd);
	free(c->in);
	free(c);
}

struct client *client_connect(int metrics)
{
	struct client *c;
	int sv[2];
	size_t i;

	for (i = 0; i < HARNESS_CLIENTS && clients[i] != NULL; i++)
		;
	if (i == HARNESS_CLIENTS)
		return NULL;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return NULL;
	c = calloc(1, sizeof *c);
	if (c == NULL)
		abort();
	c->fd = sv[1];
	c->metrics = metrics;
	clients[i] = c; /* before lws can ask whether it is a metrics connection */
	c->wsi = lws_adopt_socket_vhost(harness.vhost, sv[0]);
	if (c->wsi == NULL) { /* it closed sv[0] */
		client_free(c);
		return NULL;
	}
	return c;
}

/* Take what the worker wrote; notes EOF. */
void client_take(struct client *c)
{
	for (int rounds = 0; c->fd >= 0 && !c->eof && rounds < 1024; rounds++) {
		ssize_t n;

		if (c->in_cap - c->in_len < 65536) {
			c->in_cap = c->in_cap ? 2 * c->in_cap : 131072;
			c->in = realloc(c->in, c->in_cap);
			if (c->in == NULL)
				abort();
		}
		n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, MSG_DONTWAIT);
		if (n > 0) {
			c->in_len += (size_t)n;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
			c->eof = 1;
		break;
	}
}

struct bytes_wanted {
	struct client *c;
	size_t want;
};

static int bytes_there(void *arg)
{
	struct bytes_wanted *w = arg;

	client_take(w->c);
	return w->c->in_len >= w->want || w->c->eof;
}

int client_wait_bytes(struct client *c, size_t want)
{
	struct bytes_wanted w = { c, want };

	harness_until(bytes_there, &w);
	return c->in_len >= want;
}

void client_consume(struct client *c, size_t n)
{
	if (n > c->in_len)
		n = c->in_len;
	memmove(c->in, c->in + n, c->in_len - n);
	c->in_len -= n;
}

static int eof_there(void *arg)
{
	struct client *c = arg;

	client_take(c);
	return c->eof;
}

int client_wait_eof(struct client *c)
{
	return harness_until(eof_there, c);
}

static int wsi_gone(void *arg)
{
	return ((struct client *)arg)->wsi == NULL;
}

int client_close(struct client *c)
{
	int gone;

	close(c->fd);
	c->fd = -1;
	gone = harness_until(wsi_gone, c);
	client_free(c);
	return gone;
}

int client_send(struct client *c, const void *data, size_t len)
{
	const char *p = data;
	double deadline = now_ms() + HARNESS_WAIT_MS;

	while (len > 0) {
		ssize_t n = send(c->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			p += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			return -1;
		if (now_ms() > deadline)
			return -1;
		/* full: let the worker read (and take what it wrote meanwhile) */
		harness_service();
		client_take(c);
		usleep(100);
	}
	harness_service();
	return 0;
}

/* ---- HTTP ---- */

static const char *find_bytes(const char *hay, size_t len, const char *needle)
{
	size_t n = strlen(needle);

	for (size_t i = 0; i + n <= len; i++)
		if (memcmp(hay + i, needle, n) == 0)
			return hay + i;
	return NULL;
}

static int head_there(void *arg)
{
	struct client *c = arg;

	client_take(c);
	return c->eof || find_bytes(c->in, c->in_len, "\r\n\r\n") != NULL;
}

int http_header(const struct http_response *r, const char *name, char *out,
		size_t outlen)
{
	size_t n = strlen(name);
	const char *line = strstr(r->head, "\r\n");

	while (line != NULL && line[2] != '\0') {
		const char *start = line + 2, *end = strstr(start, "\r\n");

		if (end == NULL)
			end = start + strlen(start);
		if ((size_t)(end - start) > n && strncasecmp(start, name, n) == 0 &&
		    start[n] == ':') {
			const char *v = start + n + 1;

			while (*v == ' ' || *v == '\t')
				v++;
			snprintf(out, outlen, "%.*s", (int)(end - v), v);
			return 0;
		}
		line = *end ? end : NULL;
	}
	return -1;
}

int http_read_response(struct client *c, struct http_response *r)
{
	const char *end;
	size_t head_len, body_len = 0;
	char value[64];

	memset(r, 0, sizeof *r);
	harness_until(head_there, c);
	end = c->in_len > 0 ? find_bytes(c->in, c->in_len, "\r\n\r\n") : NULL;
	if (end == NULL)
		return -1;
	head_len = (size_t)(end - c->in) + 4;
	if (head_len >= sizeof r->head)
		return -1;
	memcpy(r->head, c->in, head_len);
	r->head[head_len] = '\0';
	if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1)
		return -1;
	client_consume(c, head_len);
	if (r->status != 101 && http_header(r, "content-length", value, sizeof value) == 0)
		body_len = strtoull(value, NULL, 10);
	if (body_len > 0 && !client_wait_bytes(c, body_len))
		return -1;
	r->body = malloc(body_len + 1);
	if (r->body == NULL)
		abort();
	memcpy(r->body, c->in, body_len);
	r->body[body_len] = '\0';
	r->body_len = body_len;
	client_consume(c, body_len);
	return 0;
}

void http_response_free(struct http_response *r)
{
	free(r->body);
	r->body = NULL;
}

/* ---- WebSocket ---- */

int ws_client_upgrade(struct client *c, struct http_response *r)
{
	static const char request[] =
		"GET / HTTP/1.1\r\n"
		"Host: localhost\r\n"
		"Upgrade: websocket\r\n"
		"Connection: Upgrade\r\n"
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
		"Sec-WebSocket-Version: 13\r\n"
		"\r\n";

	if (client_send(c, request, sizeof request - 1) < 0 || http_read_response(c, r) < 0)
		return -1;
	return r->status == 101 ? 0 : -1;
}

int ws_client_send_frame(struct client *c, int fin, int opcode, const void *data,
			 size_t len)
{
	static const unsigned char mask[4] = { 0x37, 0xfa, 0x21, 0x3d };
	unsigned char *frame = malloc(14 + len);
	size_t h = 0;
	int rc;

	if (frame == NULL)
		abort();
	frame[h++] = (unsigned char)((fin ? 0x80 : 0) | (opcode & 0x0f));
	if (len < 126) {
		frame[h++] = (unsigned char)(0x80 | len);
	} else if (len <= 0xffff) {
		frame[h++] = 0x80 | 126;
		frame[h++] = (unsigned char)(len >> 8);
		frame[h++] = (unsigned char)len;
	} else {
		frame[h++] = 0x80 | 127;
		for (int i = 0; i < 8; i++)
			frame[h++] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
	}
	memcpy(frame + h, mask, 4);
	h += 4;
	for (size_t i = 0; i < len; i++)
		frame[h + i] = ((const unsigned char *)data)[i] ^ mask[i & 3];
	rc = client_send(c, frame, h + len);
	free(frame);
	return rc;
}

int ws_client_read_frame(struct client *c, struct ws_frame *f)
{
	const unsigned char *b;
	size_t h = 2, len;

	memset(f, 0, sizeof *f);
	if (!client_wait_bytes(c, 2))
		return -1;
	b = (const unsigned char *)c->in;
	if (b[1] & 0x80)
		return -1; /* a server never masks */
	len = b[1] & 0x7f;
	if (len == 126)
		h = 4;
	else if (len == 127)
		h = 10;
	if (!client_wait_bytes(c, h))
		return -1;
	b = (const unsigned char *)c->in;
	if (h == 4) {
		len = (size_t)b[2] << 8 | b[3];
	} else if (h == 10) {
		len = 0;
		for (int i = 0; i < 8; i++)
			len = len << 8 | b[2 + i];
	}
	if (!client_wait_bytes(c, h + len))
		return -1;
	b = (const unsigned char *)c->in;
	f->fin = (b[0] & 0x80) != 0;
	f->opcode = b[0] & 0x0f;
	f->payload = malloc(len + 1);
	if (f->payload == NULL)
		abort();
	memcpy(f->payload, c->in + h, len);
	f->payload[len] = '\0';
	f->len = len;
	client_consume(c, h + len);
	return 0;
}

int ws_frame_close_code(const struct ws_frame *f)
{
	if (f->opcode != 0x8 || f->len < 2)
		return -1;
	return (unsigned char)f->payload[0] << 8 | (unsigned char)f->payload[1];
}

void ws_frame_free(struct ws_frame *f)
{
	free(f->payload);
	f->payload = NULL;
}
