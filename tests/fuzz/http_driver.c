/* The worker's HTTP and WebSocket code run in-process, for fuzzing.
 *
 * worker/http.c and worker/ws.c are linked as they are; this file stands
 * in for worker/worker.c. It defines what worker.c shares with them
 * (the struct worker_env it hands ws.c and http.c, worker.h) and
 * creates the lws context as worker_start() does: the same protocol table
 * (receive buffer, tx packet size, per-connection session), a callback
 * that dispatches to http_callback() and ws_callback() as worker.c's
 * callback() does (worker_dispatch() itself), CONTEXT_PORT_NO_LISTEN_SERVER, UTF-8 validation,
 * max_http_header_data from max_header_bytes, no validity pings. Two
 * differences: lws runs its own poll() loop instead of libevent (nothing
 * in http.c or ws.c depends on the loop), and connections are one end of
 * a Unix socketpair rather than accepted TCP sockets, adopted as
 * accept_cb() adopts them (lws_adopt_socket_vhost()).
 *
 * worker_dispatch() guards against two bugs of lws 4.1.6, and the client
 * does not pipeline because of a third: without that every run ended on
 * one of them within a minute (tests/fuzz/README.md, "Known bugs of
 * libwebsockets").
 *
 * Each run writes the input into the client's end a request at a time
 * (next_pause()), servicing lws until nothing moves any more (the input
 * taken, no answer bytes, no IPC) before the next request; it stops when
 * all is sent and done or the worker closed the connection, then hangs
 * up and services lws until the connection is gone.
 *
 * The harness also plays the supervisor: the worker's IPC output is
 * decoded (it must always decode: a message the supervisor cannot read
 * is a bug), every HTTP_REQUEST is answered at once with
 * http_answer_from_supervisor() (and once more after the client left, as
 * a late answer would be), its payload must be a packet the backend can
 * read, and every WS_PACKET is sent back to its connection with ws_send(),
 * so the answer and write paths run too; UPLOAD_STORED is remembered for
 * DOWNLOAD_CHECK, which is answered with http_download_info(). */
#include "http_driver.h"

#include "../../core/config.h"
#include "../../core/ipc.h"
#include "../../core/log.h"
#include "../../worker/worker.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/sockios.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- what worker.c defines ---- */

static struct config worker_cfg;
static struct worker_stats worker_stats;

static msgpack_sbuffer ipc_out;
static msgpack_packer packer;

static void worker_send(const struct ipc_message *m)
{
	if (ipc_pack(&packer, m) < 0)
		abort();
}
static void worker_ipc_flush(void) {} /* the supervisor's side reads it every turn */
static int worker_ipc_paused(void) { return 0; }
/* every connection here came in on the router's port, none on metrics_listen */
static int worker_is_metrics_connection(struct lws *wsi) { (void)wsi; return 0; }

/* ---- lws, as worker_start() sets it up ---- */

/* FUZZ_HTTP_TRACE=1 in the environment: show the answers and the IPC;
 * FUZZ_HTTP_PIPELINE=1: send inputs pipelined (next_pause());
 * FUZZ_HTTP_KNOWN_BUGS=1: no guard against lws's known bugs (callback()) */
static int trace, pipeline, known_bugs;

static struct lws_context *context;
static struct lws_vhost *vhost;

/* worker.c's callback: what the real worker adds is counting (no listener,
 * no address table here); the rest is worker_dispatch() itself
 * (worker/dispatch.c). FUZZ_HTTP_KNOWN_BUGS=1 leaves its guards against
 * two bugs of lws 4.1.6 out, to reproduce them. */
static int callback(struct lws *wsi, enum lws_callback_reasons reason,
		    void *user, void *in, size_t len)
{
	if (reason == LWS_CALLBACK_WSI_CREATE)
		worker_stats.connections++;
	else if (reason == LWS_CALLBACK_WSI_DESTROY)
		worker_stats.connections--;
	return worker_dispatch(wsi, reason, user, in, len, !known_bugs);
}

static const struct lws_protocols protocols[] = {
	{ "mephisto-router", callback, sizeof(struct session), 1024, 0, NULL, 256 * 1024 },
	{ NULL, NULL, 0, 0, 0, NULL, 0 },
};

static const lws_retry_bo_t no_validity_checks = { 0 };

static void die(const char *fmt, const char *arg)
{
	fprintf(stderr, "http_driver: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	abort();
}

/* ---- the temporary folders ---- */

/* under $TMPDIR (run.sh points it into build/fuzz/run/HARNESS/: a run
 * that crashed leaves its folders there, not in /tmp) */
static char static_dir[512];
static char upload_dir[512];

static void write_file(const char *dir, const char *name, const char *text)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		die("cannot write %s", path);
}

/* Remove what a folder holds, subfolders included. */
static void empty_dir(const char *dir)
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
		if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
			empty_dir(path);
			rmdir(path);
		} else {
			unlink(path);
		}
	}
	closedir(d);
}

static void remove_dirs(void)
{
	empty_dir(static_dir);
	rmdir(static_dir);
	empty_dir(upload_dir);
	rmdir(upload_dir);
}

static void make_dirs(void)
{
	const char *tmp = getenv("TMPDIR");
	char path[600];

	if (tmp == NULL || tmp[0] == '\0')
		tmp = "/tmp";
	snprintf(static_dir, sizeof static_dir, "%s/mr-fuzz-static-XXXXXX", tmp);
	snprintf(upload_dir, sizeof upload_dir, "%s/mr-fuzz-upload-XXXXXX", tmp);
	if (mkdtemp(static_dir) == NULL || mkdtemp(upload_dir) == NULL)
		die("mkdtemp: %s", strerror(errno));
	atexit(remove_dirs);
	write_file(static_dir, "index.html", "<!doctype html><title>task</title>\n");
	write_file(static_dir, "task_config.json", "{\"mephisto_task_version\": \"2.0.4\"}\n");
	write_file(static_dir, "bundle.js", "console.log(1);\n");
	write_file(static_dir, "app.mjs", "export {};\n");
	write_file(static_dir, "style.css", "body{}\n");
	write_file(static_dir, "noext", "x\n");
	write_file(static_dir, "data.weird", "x\n");
	snprintf(path, sizeof path, "%s/sub", static_dir);
	if (mkdir(path, 0755) < 0)
		die("mkdir: %s", strerror(errno));
	write_file(path, "index.html", "<p>sub</p>\n");
	snprintf(path, sizeof path, "%s/outside", static_dir);
	if (symlink("/etc/hostname", path) < 0)
		die("symlink: %s", strerror(errno));
	snprintf(path, sizeof path, "%s/inside", static_dir);
	if (symlink("bundle.js", path) < 0)
		die("symlink: %s", strerror(errno));
}

/* libFuzzer's, for every harness linked with this file (http_driver.h):
 * the environment's switches, the folders, worker_cfg and the context. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct lws_context_creation_info info;
	char err[256];

	(void)argc;
	(void)argv;

	trace = getenv("FUZZ_HTTP_TRACE") != NULL;
	pipeline = getenv("FUZZ_HTTP_PIPELINE") != NULL;
	known_bugs = getenv("FUZZ_HTTP_KNOWN_BUGS") != NULL;
	log_set_level(trace ? LOG_LVL_DEBUG : LOG_LVL_ERROR);
	lws_set_log_level(trace ? LLL_ERR | LLL_WARN : 0, NULL);
	make_dirs();
	config_defaults(&worker_cfg);
	if (config_set(&worker_cfg, "static_dir", static_dir, err, sizeof err) < 0 ||
	    config_set(&worker_cfg, "upload_dir", upload_dir, err, sizeof err) < 0)
		die("%s", err);
	msgpack_sbuffer_init(&ipc_out);
	msgpack_packer_init(&packer, &ipc_out, msgpack_sbuffer_write);
	{
		static const struct worker_env env = {
			.cfg = &worker_cfg, .stats = &worker_stats, .send = worker_send,
			.flush = worker_ipc_flush, .paused = worker_ipc_paused, .slot = 1,
			.is_metrics_connection = worker_is_metrics_connection,
		};

		ws_init(&env);
		http_init(&env);
	}

	memset(&info, 0, sizeof info);
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	info.protocols = protocols;
	info.options = LWS_SERVER_OPTION_VALIDATE_UTF8;
	info.max_http_header_data = (unsigned short)(worker_cfg.max_header_bytes > 65535
						     ? 65535 : worker_cfg.max_header_bytes);
	info.retry_and_idle_policy = &no_validity_checks;
	info.vhost_name = "default";
	context = lws_create_context(&info);
	if (context == NULL)
		die("%s", "cannot create the lws context");
	vhost = lws_get_vhost_by_name(context, "default");
	if (vhost == NULL)
		die("%s", "no vhost");
	return 0;
}

/* ---- the supervisor's side ---- */

static struct ipc_reader *reader;
static unsigned answers; /* HTTP requests answered in this run */
static uint64_t last_request, echo_seq;

/* A packet for the backend: a JSON object with a known packet_type, a
 * subject_id and a data object (PROTOCOL.md, point 10). */
static void check_backend_packet(const char *data, size_t len)
{
	static const char *const types[] = {
		"register_agent", "submit_onboarding", "submit_unit", "submit_metadata",
		"log_error",
	};
	json_error_t error;
	json_t *p = json_loadb(data, len, JSON_REJECT_DUPLICATES, &error);
	const char *type = json_string_value(json_object_get(p, "packet_type"));
	size_t i;

	if (p == NULL) {
		fprintf(stderr, "http_driver: a packet for the backend is not JSON (%s): %.*s\n",
			error.text, (int)(len > 2000 ? 2000 : len), data);
		abort();
	}
	for (i = 0; type != NULL && i < sizeof types / sizeof types[0]; i++)
		if (strcmp(type, types[i]) == 0)
			break;
	if (type == NULL || i == sizeof types / sizeof types[0] ||
	    !json_is_string(json_object_get(p, "subject_id")) ||
	    !json_is_object(json_object_get(p, "data"))) {
		fprintf(stderr, "http_driver: a packet for the backend lacks its fields: %.*s\n",
			(int)(len > 2000 ? 2000 : len), data);
		abort();
	}
	json_decref(p);
}

/* The uploads recorded in this run (UPLOAD_STORED), for DOWNLOAD_CHECK. */
static struct {
	char stored[64];
	uint64_t dev, ino;
} uploads[64];
static size_t nuploads;

static void download_check(uint64_t req, const char *stored)
{
	for (size_t i = 0; i < nuploads; i++) {
		if (strcmp(uploads[i].stored, stored) == 0) {
			http_download_info(req, 1, uploads[i].dev, uploads[i].ino);
			return;
		}
	}
	http_download_info(req, 0, 0, 0);
}

static void handle(const struct ipc_message *m)
{
	if (trace)
		fprintf(stderr, "http_driver: IPC %s\n", ipc_type_name(m->type));
	switch (m->type) {
	case IPC_WS_OPENED:
	case IPC_WS_CLOSED:
	case IPC_WS_UNSENT:
	case IPC_WS_SENT:
		return;
	case IPC_WS_PACKET:
		if (echo_seq++ < 64)
			ws_send(m->ws_packet.conn, echo_seq, m->ws_packet.packet.payload,
				m->ws_packet.packet.len);
		return;
	case IPC_VERSION_MISMATCH:
		check_backend_packet(m->version_mismatch.packet, m->version_mismatch.len);
		return;
	case IPC_HTTP_REQUEST: {
		uint64_t req = m->http_request.req;

		check_backend_packet(m->http_request.packet, m->http_request.len);
		if ((m->http_request.flags & IPC_HTTP_WAIT_DETAILS) && m->http_request.request_id == NULL)
			die("%s", "a request waiting for agent_details has no request id");
		last_request = req;
		/* mostly what the backend would say; a 408 now and then */
		if (++answers % 4 == 0)
			http_answer_from_supervisor(req, 408, "{\"error\": \"timed out\"}", 22);
		else if (m->http_request.flags & IPC_HTTP_WAIT_DETAILS)
			http_answer_from_supervisor(req, 200,
						    "{\"agent_id\": \"7\", \"request_id\": \"r\"}",
						    37);
		else
			http_answer_from_supervisor(req, 200, NULL, 0);
		return;
	}
	case IPC_UPLOAD_STORED:
		if (nuploads < sizeof uploads / sizeof uploads[0]) {
			snprintf(uploads[nuploads].stored, sizeof uploads[0].stored, "%s",
				 m->upload_stored.stored);
			uploads[nuploads].dev = m->upload_stored.dev;
			uploads[nuploads].ino = m->upload_stored.ino;
			nuploads++;
		}
		return;
	case IPC_DOWNLOAD_CHECK:
		download_check(m->download_check.req, m->download_check.stored);
		return;
	default:
		/* worker -> supervisor messages are numbered 100..199 */
		if (m->type < 100 || m->type >= 200)
			die("the worker sent a message of the wrong direction: %s",
			    ipc_type_name(m->type));
		return;
	}
}

/* Read and act on what the worker sent. Returns 1 if there was any. */
static int supervisor_turn(void)
{
	int any = 0;

	while (ipc_out.size > 0) {
		struct ipc_message m;
		char err[256];
		size_t n = ipc_out.size;
		int rc;

		any = 1;
		memcpy(ipc_reader_buffer(reader, n), ipc_out.data, n);
		ipc_reader_consumed(reader, n);
		msgpack_sbuffer_clear(&ipc_out);
		while ((rc = ipc_reader_next(reader, &m, err, sizeof err)) == 1)
			handle(&m);
		if (rc < 0)
			die("the worker's IPC does not decode: %s", err);
	}
	return any;
}

/* ---- one connection ---- */

#define MAX_TURNS 20000 /* lws services per run, at most */
#define QUIET_TURNS 4   /* services in which nothing moved: the worker is done */

/* How the client sends: a request at a time, as a browser does (it sends
 * a request once the previous answer came): the head up to its blank
 * line and as many bytes of body as its Content-Length says, then it
 * waits for the worker to be done; after a head that asks for an upgrade
 * it waits too, then sends the rest as it is (a WebSocket client sends
 * no frame before the 101, RFC 6455 4.1).
 *
 * Not pipelined, because lws 4.1.6 mishandles a request with a body
 * whose head it takes from its buffer behind a previous request: it
 * spins forever, or hands the body callback a freed buffer (README.md,
 * "Known bugs"); the fuzzer found one or the other within a minute of
 * every pipelined run. FUZZ_HTTP_PIPELINE=1 in the environment sends the
 * input as it comes instead (pausing only after an upgrade request). */

/* Where the line after the blank line that ends the head at off starts,
 * or len. */
static size_t head_end(const uint8_t *bytes, size_t off, size_t len)
{
	for (size_t i = off; i + 1 < len; i++) {
		if (bytes[i] != '\n')
			continue;
		if (bytes[i + 1] == '\n')
			return i + 2;
		if (bytes[i + 1] == '\r' && i + 2 < len && bytes[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

/* A header of the head [off, end): its value's start, or NULL. */
static const uint8_t *head_field(const uint8_t *bytes, size_t off, size_t end,
				 const char *name)
{
	size_t n = strlen(name);

	for (size_t i = off; i + n < end; i++) {
		if ((i == off || bytes[i - 1] == '\n') &&
		    strncasecmp((const char *)bytes + i, name, n) == 0) {
			for (i += n; i < end && (bytes[i] == ' ' || bytes[i] == '\t'); i++)
				;
			return bytes + i;
		}
	}
	return NULL;
}

/* The end of the request at off; *upgrade set if it asks for one. */
static size_t next_pause(const uint8_t *bytes, size_t off, size_t len, int *upgrade)
{
	size_t end = head_end(bytes, off, len);
	const uint8_t *v = head_field(bytes, off, end, "content-length:");
	uint64_t body = 0;

	*upgrade = head_field(bytes, off, end, "upgrade:") != NULL;
	for (; v != NULL && v < bytes + end && *v >= '0' && *v <= '9'; v++)
		body = body > len ? body : body * 10 + (uint64_t)(*v - '0');
	return body >= len - end ? len : end + (size_t)body;
}

void http_driver_run(const uint8_t *bytes, size_t len)
{
	static char sink[65536];
	uint64_t before = worker_stats.connections;
	int upgrade = 0;
	size_t off = 0, pause = next_pause(bytes, 0, len, &upgrade);

	if (pipeline && !upgrade)
		pause = len;
	int sv[2], quiet = 0, hung_up = 0, unread = 0, last_unread = 0;

	if (reader == NULL)
		reader = ipc_reader_new(IPC_MAX_MESSAGE(worker_cfg.max_message_bytes));
	answers = 0;
	nuploads = 0;
	echo_seq = 0;
	last_request = 0;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	if (lws_adopt_socket_vhost(vhost, sv[0]) == NULL) /* it closed sv[0] */
		die("%s", "lws_adopt_socket_vhost failed");
	for (int turn = 0; turn < MAX_TURNS && !hung_up; turn++) {
		int moved = 0;
		ssize_t n;

		if (quiet >= QUIET_TURNS) {
			if (pause == len)
				break;
			/* the worker is done with what came so far: the rest */
			pause = pipeline || upgrade ? len : next_pause(bytes, pause, len, &upgrade);
			quiet = 0;
		}
		if (off < pause) {
			n = send(sv[1], bytes + off, pause - off, MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n > 0) {
				off += (size_t)n;
				moved = 1;
			}
		}
		lws_service(context, -1);
		/* lws reads 1 KiB per service: what it took from the client
		 * is progress even when nothing came out of it yet */
		if (ioctl(sv[1], SIOCOUTQ, &unread) == 0 && unread != last_unread) {
			last_unread = unread;
			moved = 1;
		}
		moved |= supervisor_turn();
		while ((n = recv(sv[1], sink, sizeof sink, MSG_DONTWAIT)) > 0) {
			moved = 1;
			if (trace)
				fprintf(stderr, "http_driver: answer: %.*s\n", (int)n, sink);
		}
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
			hung_up = 1; /* the worker closed the connection */
		quiet = moved ? 0 : quiet + 1;
		if (trace)
			fprintf(stderr, "http_driver: turn %d: %zu of %zu bytes sent%s%s\n", turn,
				off, len, moved ? "" : ", quiet", hung_up ? ", closed" : "");
	}
	close(sv[1]);
	for (int turn = 0; turn < 1000 && worker_stats.connections > before; turn++) {
		lws_service(context, -1);
		supervisor_turn();
	}
	if (worker_stats.connections > before)
		die("%s", "the connection outlived its client");
	/* an answer for a request whose client is gone must be dropped */
	if (last_request != 0)
		http_answer_from_supervisor(last_request, 200, NULL, 0);
	supervisor_turn();
	empty_dir(upload_dir);
}
