/* HTTP requests of one worker: the router's endpoints and the files of
 * static_dir and upload_dir.
 *
 * GET endpoints are answered here. POST endpoints read their body (JSON, or
 * multipart/form-data through lws_spa with files streamed to upload_dir),
 * build the packet for the backend with jansson and hand it to the
 * supervisor (HTTP_REQUEST); the answer comes back as HTTP_ANSWER, at once
 * or, for request_agent and submit_onboarding, when the backend's
 * agent_details arrives (or the request times out).
 *
 * Every answer is written in one lws_write (headers and body together) and
 * carries X-Router-Worker and Cache-Control: no-cache. Files are streamed
 * by lws_serve_http_file(); the lookup is ours, so that 404s carry our
 * headers too (lws mounts answer errors without them and send no-store),
 * and so that a path can never leave its folder: ".." segments are refused;
 * symlinks placed in static_dir are followed (Mephisto's link_task_source
 * links the task's bundle there). A download is served only when the
 * supervisor has recorded it, from a descriptor opened with O_NOFOLLOW and
 * checked to be the very file recorded. */
#include "worker.h"

#include "../core/idtable.h"
#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/route.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#define HEADER_BUF 1024
#define MAX_UPLOAD_FILES 64
/* Stored uploads are named UPLOAD_PREFIX + 32 hex digits, never by the client. */
#define UPLOAD_PREFIX "mr-"
#define UPLOAD_NAME_LEN (3 + 32)

enum endpoint {
	EP_REQUEST_AGENT = 1,
	EP_SUBMIT_ONBOARDING,
	EP_SUBMIT_TASK,
	EP_SUBMIT_METADATA,
	EP_LOG_ERROR,
};

static const struct {
	const char *path;
	enum endpoint ep;
	const char *ok_body; /* the answer once the supervisor has the packet */
} posts[] = {
	{ "/request_agent", EP_REQUEST_AGENT, NULL },
	{ "/submit_onboarding", EP_SUBMIT_ONBOARDING, NULL },
	{ "/submit_task", EP_SUBMIT_TASK, "{\"status\": \"Submitted!\"}" },
	{ "/submit_metadata", EP_SUBMIT_METADATA, "{\"status\": \"Submitted metadata\"}" },
	{ "/log_error", EP_LOG_ERROR, "{\"status\": \"Error log sent!\"}" },
};

struct upload {
	char *field, *original, *mimetype;
	char stored[UPLOAD_NAME_LEN + 1];
	char *path;
	size_t size;
	uint64_t dev, ino; /* the file's identity, recorded by the supervisor */
};

struct http_req {
	int post; /* index into posts[] + 1; 0 for GET */
	int multipart;
	char *body;
	size_t len, expected;
	struct lws_spa *spa;
	struct upload files[MAX_UPLOAD_FILES];
	size_t nfiles;
	int fd; /* the upload being written, or -1 */
	/* the multipart boundary and the body's last bytes: lws_spa does not
	 * report a body that ends before its closing boundary */
	char boundary[80];
	char tail[128];
	size_t tail_len;
	int spa_failed;
	const char *spa_error; /* why, when not just "malformed" */
	int committed; /* the uploads now belong to the backend */
	uint64_t pending; /* waiting for the supervisor's answer */
	size_t memory;    /* its share of body_memory */
	unsigned char *answer; /* LWS_PRE + headers + body */
	size_t answer_len;
	unsigned int status; /* of the answer */
	int close_after;
	char download[UPLOAD_NAME_LEN + 1]; /* the stored name asked for */
	/* for the access log (access_log = 1) */
	double started;
	char method[8];
	char path[160];
	int file_fd;      /* a download being sent after the answer's headers */
	size_t file_left; /* its bytes still to send */
};

/* Requests waiting for the supervisor, by the id sent in HTTP_REQUEST. */
static struct idtable pending;

/* Bytes of request bodies held in memory now (body_memory_bytes). */
static size_t body_memory;

/* mephisto-task versions this worker already reported. */
static char *reported_versions[32];
static size_t nreported;

/* Types lws lacks, and the fallback for any other extension (lws answers
 * 415 for unknown ones: LWS-NOTES trap 4). */
static const struct lws_protocol_vhost_options mime_fallback = {
	NULL, NULL, "*", "application/octet-stream"
};
static const struct lws_protocol_vhost_options mime_mjs = {
	&mime_fallback, NULL, ".mjs", "text/javascript"
};
static const struct lws_protocol_vhost_options mime_map = {
	&mime_mjs, NULL, ".map", "application/json"
};
static const struct lws_protocol_vhost_options mime_wasm = {
	&mime_map, NULL, ".wasm", "application/wasm"
};
static const struct lws_protocol_vhost_options mime_webp = {
	&mime_wasm, NULL, ".webp", "image/webp"
};
static const struct lws_protocol_vhost_options mime_pdf = {
	&mime_webp, NULL, ".pdf", "application/pdf"
};
static const struct lws_protocol_vhost_options mime_csv = {
	&mime_pdf, NULL, ".csv", "text/csv"
};
static const struct lws_protocol_vhost_options mime_mp4 = {
	&mime_csv, NULL, ".mp4", "video/mp4"
};
static const struct lws_protocol_vhost_options mime_mp3 = {
	&mime_mp4, NULL, ".mp3", "audio/mpeg"
};
static const struct lws_protocol_vhost_options mime_wav = {
	&mime_mp3, NULL, ".wav", "audio/wav"
};
static const struct lws_http_mount mime_mount = { .extra_mimetypes = &mime_wav };

static const char *mimetype_of(const char *name)
{
	const char *type = lws_get_mimetype(name, &mime_mount);

	return type ? type : "application/octet-stream";
}

/* ---- requests ---- */

static struct http_req *req_get(struct session *s)
{
	if (s->req == NULL) {
		s->req = calloc(1, sizeof *s->req);
		if (s->req == NULL)
			fatal("out of memory");
		s->req->fd = -1;
		s->req->file_fd = -1;
	}
	return s->req;
}

/* Delete the files of a request that will not reach the backend. */
static void discard_uploads(struct http_req *r)
{
	if (r->fd >= 0) {
		close(r->fd);
		r->fd = -1;
	}
	for (size_t i = 0; i < r->nfiles && !r->committed; i++)
		if (unlink(r->files[i].path) < 0 && errno != ENOENT)
			log_warn("cannot remove upload %s: %s", r->files[i].path,
				 strerror(errno));
	r->committed = 1; /* nothing left to delete */
}

static void req_free(struct session *s)
{
	struct http_req *r = s->req;

	if (r == NULL)
		return;
	if (r->pending)
		idtable_del(&pending, r->pending);
	body_memory -= r->memory;
	if (r->spa != NULL)
		lws_spa_destroy(r->spa);
	if (r->fd >= 0)
		close(r->fd);
	if (r->file_fd >= 0)
		close(r->file_fd);
	for (size_t i = 0; i < r->nfiles; i++) {
		/* A refused or abandoned request leaves nothing behind. */
		if (!r->committed && unlink(r->files[i].path) < 0 && errno != ENOENT)
			log_warn("cannot remove upload %s: %s", r->files[i].path,
				 strerror(errno));
		free(r->files[i].field);
		free(r->files[i].original);
		free(r->files[i].path);
	}
	free(r->body);
	free(r->answer);
	free(r);
	s->req = NULL;
}

void http_free_all(void)
{
	idtable_free(&pending);
	for (size_t i = 0; i < nreported; i++)
		free(reported_versions[i]);
	nreported = 0;
}

/* ---- answers ---- */

static int add_worker_header(struct lws *wsi, unsigned char **p,
			     unsigned char *end)
{
	char slot[16];
	int n = snprintf(slot, sizeof slot, "%d", worker_slot);

	return lws_add_http_header_by_name(wsi, (const unsigned char *)"x-router-worker:",
					   (const unsigned char *)slot, n, p, end);
}

/* Our headers, appended to an lws header buffer. */
static int add_router_headers(struct lws *wsi, unsigned char **p,
			      unsigned char *end)
{
	if (add_worker_header(wsi, p, end) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
					(const unsigned char *)"no-cache", 8, p, end))
		return -1;
	return 0;
}

/* Prepare the whole answer and ask for the WRITEABLE callback. close_after:
 * the request body was not (fully) read, so the connection cannot be
 * reused. */
/* One line per request: client, method, path, status, bytes, time,
 * written when the answer is made (the path as the client sent it, escaped
 * and cut by the log). */
static void access_line(struct lws *wsi, struct http_req *r, unsigned int status,
			long long bytes)
{
	char client[64] = "?";

	if (r == NULL || r->method[0] == '\0')
		return;
	lws_get_peer_simple(wsi, client, sizeof client);
	log_info("access %s \"%s %s\" %u %lld %.1f ms", client, r->method, r->path, status,
		 bytes, (wire_now() - r->started) * 1000);
	r->method[0] = '\0'; /* once */
}

/* The request's time into its endpoint's histogram, once. */
static void count_time(struct session *s)
{
	static const double bounds[IPC_LATENCY_BUCKETS] = IPC_LATENCY_BOUNDS;
	double t;
	int b = 0;

	if (s == NULL || s->endpoint < 0 || s->started == 0)
		return;
	t = wire_now() - s->started;
	while (b < IPC_LATENCY_BUCKETS && t > bounds[b])
		b++;
	worker_stats.latency[s->endpoint][b]++;
	worker_stats.latency_sum[s->endpoint] += t;
	s->endpoint = -1;
}

/* Which histogram a request path counts in. */
static int endpoint_of(const char *uri, int post)
{
	static const struct {
		const char *path;
		int ep;
	} known[] = {
		{ "/is_alive", IPC_EP_IS_ALIVE }, { "/get_timestamp", IPC_EP_GET_TIMESTAMP },
		{ "/request_agent", IPC_EP_REQUEST_AGENT },
		{ "/submit_onboarding", IPC_EP_SUBMIT_ONBOARDING },
		{ "/submit_task", IPC_EP_SUBMIT_TASK },
		{ "/submit_metadata", IPC_EP_SUBMIT_METADATA }, { "/log_error", IPC_EP_LOG_ERROR },
		{ "/metrics", IPC_EP_METRICS },
	};

	for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
		if (strcmp(uri, known[i].path) == 0)
			return known[i].ep;
	if (strncmp(uri, "/download_file/", 15) == 0)
		return IPC_EP_DOWNLOAD;
	return post ? IPC_EP_OTHER : IPC_EP_STATIC;
}

static int answer_sized(struct lws *wsi, struct session *s, unsigned int status,
			const char *type, const char *body, size_t len,
			lws_filepos_t content_length, int close_after)
{
	struct http_req *r = req_get(s);
	unsigned char *start, *p, *end;
	int head_only = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;

	free(r->answer);
	r->answer = malloc(LWS_PRE + HEADER_BUF + len);
	if (r->answer == NULL)
		fatal("out of memory");
	start = p = r->answer + LWS_PRE;
	end = start + HEADER_BUF - 1;
	if (lws_add_http_common_headers(wsi, status, type, content_length, &p, end) ||
	    add_router_headers(wsi, &p, end) ||
	    (close_after && lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
				(const unsigned char *)"close", 5, &p, end)) ||
	    lws_finalize_http_header(wsi, &p, end))
		return -1;
	if (!head_only && len > 0) {
		memcpy(p, body, len);
		p += len;
	}
	r->answer_len = (size_t)(p - start);
	r->close_after = close_after;
	r->status = status;
	access_line(wsi, r, status, (long long)content_length);
	count_time(s);
	worker_stats.http_requests++;
	if (status >= 400)
		worker_stats.http_errors++;
	lws_callback_on_writable(wsi);
	return 0;
}

static int answer(struct lws *wsi, struct session *s, unsigned int status,
		  const char *type, const char *body, size_t len, int close_after)
{
	return answer_sized(wsi, s, status, type, body, len, (lws_filepos_t)len,
			    close_after);
}

static int answer_json(struct lws *wsi, struct session *s, unsigned int status,
		       const char *json)
{
	return answer(wsi, s, status, "application/json", json, strlen(json), 0);
}

/* Copy at most outlen - 1 bytes of in, each byte that is not printable
 * ASCII replaced by '?'. */
static void printable_copy(char *out, size_t outlen, const char *in, size_t len)
{
	size_t n = len < outlen - 1 ? len : outlen - 1;

	for (size_t i = 0; i < n; i++)
		out[i] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
	out[n] = '\0';
}

/* 1 when the len bytes at s are valid UTF-8 (jansson's own check). */
static int is_utf8(const char *s, size_t len)
{
	json_t *t = json_stringn(s, len);

	json_decref(t);
	return t != NULL;
}

/* An error answer: {"error": message}. */
static int answer_error(struct lws *wsi, struct session *s, unsigned int status,
			const char *message, int close_after)
{
	char safe[512];
	json_t *obj;
	char *text;
	int rc;

	/* Messages may quote what the client sent (a parser's error near a
	 * token): only printable ASCII goes into the JSON. */
	printable_copy(safe, sizeof safe, message, strlen(message));
	obj = json_pack("{s:s}", "error", safe);
	text = json_dumps(obj, JSON_COMPACT);

	/* A refused request leaves nothing behind, before the client hears. */
	if (s->req != NULL)
		discard_uploads(s->req);
	json_decref(obj);
	if (text == NULL)
		fatal("out of memory");
	rc = answer(wsi, s, status, "application/json", text, strlen(text), close_after);
	free(text);
	return rc;
}

/* The next piece of a download, read from the descriptor checked when it
 * was opened (never by its name again). */
static int send_file_piece(struct lws *wsi, struct session *s)
{
	struct http_req *r = s->req;
	unsigned char buf[LWS_PRE + 65536];
	size_t want = r->file_left < 65536 ? r->file_left : 65536;
	ssize_t got = read(r->file_fd, buf + LWS_PRE, want);

	if (got <= 0) {
		log_warn("download: the file ended early; closing the connection");
		return -1;
	}
	r->file_left -= (size_t)got;
	if (lws_write(wsi, buf + LWS_PRE, (size_t)got,
		      r->file_left ? LWS_WRITE_HTTP : LWS_WRITE_HTTP_FINAL) < got)
		return -1;
	if (r->file_left > 0) {
		lws_callback_on_writable(wsi);
		return 0;
	}
	req_free(s);
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int on_writeable(struct lws *wsi, struct session *s)
{
	struct http_req *r = s->req;
	int close_after, n;

	if (r == NULL)
		return 0;
	if (r->answer == NULL)
		return r->file_fd >= 0 ? send_file_piece(wsi, s) : 0;
	if (r->file_fd >= 0) { /* the headers, then the file */
		n = lws_write(wsi, r->answer + LWS_PRE, r->answer_len, LWS_WRITE_HTTP_HEADERS);
		free(r->answer);
		r->answer = NULL;
		if (n < (int)r->answer_len)
			return -1;
		lws_callback_on_writable(wsi);
		return 0;
	}
	n = lws_write(wsi, r->answer + LWS_PRE, r->answer_len, LWS_WRITE_HTTP_FINAL);
	close_after = r->close_after;
	if (n < (int)r->answer_len)
		close_after = 1;
	req_free(s);
	if (close_after)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

void http_answer_from_supervisor(uint64_t id, unsigned int status,
				 const char *body, size_t len)
{
	struct lws *wsi = idtable_del(&pending, id);
	struct session *s;
	const char *ok;

	if (wsi == NULL) {
		log_debug("answer for request %llu, whose client is gone: dropped",
			  (unsigned long long)id);
		return;
	}
	s = lws_wsi_user(wsi);
	s->req->pending = 0;
	ok = posts[s->req->post - 1].ok_body;
	if (body == NULL && ok != NULL)
		body = ok, len = strlen(ok);
	if (answer(wsi, s, status, "application/json", body ? body : "{}",
		   body ? len : 2, 0) < 0)
		lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}

/* ---- files ---- */

/* Map a request path to a regular file in static_dir, or fail. The path
 * itself can never leave the folder (no ".." segment); symlinks the
 * operator put there are followed (Mephisto's link_task_source links a
 * task's bundle into it). Downloads do not come here: see serve_download. */
static int resolve_static(const char *uri, char *out, size_t outlen)
{
	char joined[PATH_MAX * 2], root[PATH_MAX];
	const char *seg;
	struct stat st;
	int n;

	if (uri[0] != '/')
		return -1;
	for (seg = uri; seg != NULL; seg = strchr(seg + 1, '/'))
		if (strncmp(seg, "/..", 3) == 0 && (seg[3] == '/' || seg[3] == '\0'))
			return -1;
	if (realpath(worker_cfg.static_dir, root) == NULL)
		return -1;
	snprintf(joined, sizeof joined, "%s%s%s", root, uri,
		 uri[strlen(uri) - 1] == '/' ? "index.html" : "");
	if (stat(joined, &st) == 0 && S_ISDIR(st.st_mode))
		n = snprintf(out, outlen, "%s/index.html", joined);
	else
		n = snprintf(out, outlen, "%s", joined);
	if (n < 0 || (size_t)n >= outlen)
		return -1;
	return stat(out, &st) == 0 && S_ISREG(st.st_mode) ? 0 : -1;
}

static int serve_file(struct lws *wsi, struct session *s, const char *uri)
{
	char path[PATH_MAX];
	unsigned char headers[HEADER_BUF], *p = headers;
	const char *type;
	int n;

	if (resolve_static(uri, path, sizeof path) < 0)
		return answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
	type = mimetype_of(path);
	if (add_router_headers(wsi, &p, headers + sizeof headers - 1))
		return -1;
	*p = '\0';
	n = lws_serve_http_file(wsi, path, type, (const char *)headers,
				(int)(p - headers));
	if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi)))
		return -1;
	return 0;
}

static int is_stored_upload_name(const char *name)
{
	if (strlen(name) != UPLOAD_NAME_LEN ||
	    strncmp(name, UPLOAD_PREFIX, strlen(UPLOAD_PREFIX)) != 0)
		return 0;
	for (const char *c = name + strlen(UPLOAD_PREFIX); *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
			return 0;
	return 1;
}

static int upload_path(char *out, size_t len, const char *stored)
{
	const char *dir = worker_cfg.upload_dir;
	size_t dirlen = strlen(dir);
	int n = snprintf(out, len, "%.*s%s%s", (int)(len - UPLOAD_NAME_LEN - 2), dir,
			 dirlen && dir[dirlen - 1] == '/' ? "" : "/", stored);

	return n > 0 && (size_t)n < len ? 0 : -1;
}

/* GET /download_file/<name>: only uploads the supervisor has recorded; the
 * answer comes with DOWNLOAD_INFO (http_download_info). */
static int serve_download(struct lws *wsi, struct session *s, const char *name)
{
	struct http_req *r;

	if (!is_stored_upload_name(name))
		return answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
	r = req_get(s);
	memcpy(r->download, name, UPLOAD_NAME_LEN + 1);
	r->pending = idtable_add(&pending, wsi);
	ipc_pack_download_check(worker_ipc_packer(), r->pending, name);
	worker_ipc_check();
	return 0;
}

void http_metrics_text(uint64_t id, const char *text, size_t len)
{
	struct lws *wsi = idtable_del(&pending, id);
	struct session *s;

	if (wsi == NULL)
		return;
	s = lws_wsi_user(wsi);
	s->req->pending = 0;
	answer(wsi, s, HTTP_STATUS_OK, "text/plain; version=0.0.4; charset=utf-8", text, len,
	       0);
}

void http_download_info(uint64_t id, int found, uint64_t dev, uint64_t ino)
{
	struct lws *wsi = idtable_del(&pending, id);
	struct session *s;
	struct http_req *r;
	char path[PATH_MAX];
	struct stat st;
	int fd;

	if (wsi == NULL)
		return; /* the client is gone */
	s = lws_wsi_user(wsi);
	r = s->req;
	r->pending = 0;
	if (!found) {
		answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
		return;
	}
	fd = upload_path(path, sizeof path, r->download) < 0
		     ? -1 : open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino) {
		if (fd >= 0) {
			close(fd);
			log_warn("download of %s refused: the file there is not the upload "
				 "recorded (replaced, or a link)", r->download);
		}
		answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
		return;
	}
	if (st.st_size == 0 || lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0) {
		close(fd);
		answer_sized(wsi, s, HTTP_STATUS_OK, "application/octet-stream", NULL, 0,
			     (lws_filepos_t)st.st_size, 0);
		return;
	}
	r->file_fd = fd;
	r->file_left = (size_t)st.st_size;
	answer_sized(wsi, s, HTTP_STATUS_OK, "application/octet-stream", NULL, 0,
		     (lws_filepos_t)st.st_size, 0);
}

/* ---- task_config.json and the mephisto-task version ---- */

static void expected_version(char *out, size_t len)
{
	char path[PATH_MAX + 32];
	json_t *config, *v;

	snprintf(out, len, "%s", worker_cfg.mephisto_task_version);
	snprintf(path, sizeof path, "%s/task_config.json", worker_cfg.static_dir);
	config = json_load_file(path, 0, NULL);
	v = json_object_get(config, "mephisto_task_version");
	if (json_is_string(v))
		snprintf(out, len, "%s", json_string_value(v));
	json_decref(config);
}

static void check_task_version(struct lws *wsi)
{
	char reported[64], expected[64], text[256];
	const char *v = lws_get_urlarg_by_name(wsi, "mephisto_task_version=",
					       reported, sizeof reported);
	json_t *packet;
	char *payload;

	if (v == NULL)
		return;
	/* The query is the client's: whatever it holds, the warning names it
	 * in printable ASCII (json_pack refuses text that is not UTF-8). */
	printable_copy(reported, sizeof reported, v, strlen(v));
	v = reported;
	expected_version(expected, sizeof expected);
	if (strcmp(v, expected) == 0)
		return;
	for (size_t i = 0; i < nreported; i++)
		if (strcmp(reported_versions[i], v) == 0)
			return; /* this worker told the supervisor already */
	if (nreported < sizeof reported_versions / sizeof reported_versions[0]) {
		reported_versions[nreported] = strdup(v);
		if (reported_versions[nreported] != NULL)
			nreported++;
	}
	snprintf(text, sizeof text,
		 "The task page uses mephisto-task version %s, but this task expects "
		 "version %s; update the task's mephisto-task package.", v, expected);
	packet = json_pack("{s:s, s:s, s:{s:s, s:s}, s:f}", "packet_type", "log_error",
			   "subject_id", PACKET_MEPHISTO, "data", "error_type",
			   "version-mismatch", "text", text,
			   "router_incoming_timestamp", wire_now());
	payload = json_dumps(packet, JSON_COMPACT);
	json_decref(packet);
	if (payload == NULL)
		fatal("out of memory");
	ipc_pack_version_mismatch(worker_ipc_packer(), v, payload, strlen(payload));
	worker_ipc_check();
	free(payload);
}

/* ---- POST bodies ---- */

static void random_hex(char *out, size_t bytes)
{
	unsigned char buf[32];
	size_t got = 0;

	while (got < bytes) {
		ssize_t n = getrandom(buf + got, bytes - got, 0);
		if (n < 0 && errno != EINTR)
			fatal("getrandom: %s", strerror(errno));
		if (n > 0)
			got += (size_t)n;
	}
	for (size_t i = 0; i < bytes; i++)
		sprintf(out + 2 * i, "%02x", buf[i]);
}

static void uuid4(char out[37])
{
	char hex[33];

	random_hex(hex, 16);
	hex[12] = '4';
	hex[16] = "89ab"[(hex[16] - '0') & 3];
	snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12,
		 hex + 16, hex + 20);
}

static int upload_cb(void *data, const char *name, const char *filename,
		     char *buf, int len, enum lws_spa_fileupload_states state)
{
	struct http_req *r = ((struct session *)data)->req;
	struct upload *u;
	struct stat st;
	const char *dir = worker_cfg.upload_dir;
	size_t dirlen = strlen(dir);

	switch (state) {
	case LWS_UFS_OPEN:
		if (r->nfiles == MAX_UPLOAD_FILES) {
			log_info("upload refused: more than %d files", MAX_UPLOAD_FILES);
			return -1;
		}
		/* Both names go into the packet's JSON as they are. */
		if (!is_utf8(name, strlen(name)) || !is_utf8(filename, strlen(filename))) {
			r->spa_error = "a multipart field name or file name is not UTF-8";
			return -1;
		}
		u = &r->files[r->nfiles];
		memset(u, 0, sizeof *u);
		memcpy(u->stored, UPLOAD_PREFIX, strlen(UPLOAD_PREFIX));
		random_hex(u->stored + strlen(UPLOAD_PREFIX), 16);
		u->field = strdup(name);
		u->original = strdup(filename);
		u->mimetype = (char *)mimetype_of(filename);
		u->path = malloc(dirlen + UPLOAD_NAME_LEN + 2);
		if (!u->field || !u->original || !u->path)
			fatal("out of memory");
		sprintf(u->path, "%s%s%s", dir, dirlen && dir[dirlen - 1] == '/' ? "" : "/",
			u->stored);
		r->nfiles++;
		r->fd = open(u->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			     0600);
		if (r->fd < 0 || fstat(r->fd, &st) < 0) {
			log_error("cannot store upload %s: %s", u->path, strerror(errno));
			return -1;
		}
		u->dev = (uint64_t)st.st_dev;
		u->ino = (uint64_t)st.st_ino;
		return 0;
	case LWS_UFS_CONTENT:
	case LWS_UFS_FINAL_CONTENT:
		if (r->fd < 0)
			return -1;
		u = &r->files[r->nfiles - 1];
		for (int done = 0; done < len;) {
			ssize_t n = write(r->fd, buf + done, (size_t)(len - done));
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				log_error("cannot write upload %s: %s", u->path, strerror(errno));
				return -1;
			}
			done += (int)n;
		}
		u->size += (size_t)len;
		if (state == LWS_UFS_FINAL_CONTENT) {
			close(r->fd);
			r->fd = -1;
		}
		return 0;
	case LWS_UFS_CLOSE:
		if (r->fd >= 0) {
			close(r->fd);
			r->fd = -1;
		}
		return 0;
	}
	return 0;
}

static const char *const form_fields[] = {
	"USED_AGENT_ID", "final_string_data", "metadata", "client_timestamp",
};
enum { FORM_AGENT, FORM_FINAL_STRING_DATA, FORM_METADATA, FORM_CLIENT_TIMESTAMP };

/* The request body as a JSON object: parsed from the JSON body, or made of
 * the multipart form's fields (values as strings). */
static json_t *body_object(struct http_req *r, char *why, size_t whylen)
{
	json_error_t error;
	json_t *obj;

	if (!r->multipart) {
		obj = json_loadb(r->body ? r->body : "", r->len, JSON_REJECT_DUPLICATES, &error);
		if (obj == NULL) {
			snprintf(why, whylen, "the body is not JSON: %s at line %d column %d",
				 error.text, error.line, error.column);
			return NULL;
		}
		if (!json_is_object(obj)) {
			json_decref(obj);
			snprintf(why, whylen, "the body is not a JSON object");
			return NULL;
		}
		return obj;
	}
	obj = json_object();
	for (int i = 0; i < (int)(sizeof form_fields / sizeof form_fields[0]); i++) {
		const char *v = lws_spa_get_string(r->spa, i);
		json_t *value;

		if (v == NULL)
			continue;
		value = json_stringn(v, (size_t)lws_spa_get_length(r->spa, i));
		if (value == NULL) { /* not UTF-8: refused, never dropped */
			snprintf(why, whylen, "the form field %s is not UTF-8", form_fields[i]);
			json_decref(obj);
			return NULL;
		}
		json_object_set_new(obj, form_fields[i], value);
	}
	return obj;
}

/* A member that may be a JSON object or JSON text holding one. */
static json_t *object_or_text(json_t *v, const char *name, char *why, size_t whylen)
{
	json_error_t error;
	json_t *parsed;

	if (v == NULL || json_is_null(v))
		return json_object();
	if (json_is_object(v))
		return json_incref(v);
	if (!json_is_string(v)) {
		snprintf(why, whylen, "%s must be an object or JSON text", name);
		return NULL;
	}
	parsed = json_loadb(json_string_value(v), json_string_length(v), 0, &error);
	if (parsed == NULL || !json_is_object(parsed)) {
		snprintf(why, whylen, "%s is not a JSON object%s%s", name,
			 parsed ? "" : ": ", parsed ? "" : error.text);
		json_decref(parsed);
		return NULL;
	}
	return parsed;
}

static json_t *client_timestamp_of(json_t *body)
{
	json_t *v = json_object_get(body, "client_timestamp");
	char *end;
	double d;

	if (json_is_number(v))
		return json_real(json_number_value(v));
	if (json_is_string(v)) {
		d = strtod(json_string_value(v), &end);
		if (end != json_string_value(v) && *end == '\0' && isfinite(d))
			return json_real(d);
	}
	return json_null();
}

static json_t *file_record(const struct upload *u, int with_field)
{
	json_t *rec = json_object();

	if (with_field)
		json_object_set_new(rec, "fieldname", json_string(u->field));
	json_object_set_new(rec, "originalname", json_string(u->original));
	json_object_set_new(rec, "encoding", json_string("7bit"));
	json_object_set_new(rec, "mimetype", json_string(u->mimetype));
	json_object_set_new(rec, "destination", json_string(worker_cfg.upload_dir));
	json_object_set_new(rec, "filename", json_string(u->stored));
	json_object_set_new(rec, "path", json_string(u->path));
	json_object_set_new(rec, "size", json_integer((json_int_t)u->size));
	return rec;
}

/* data.files and data.filesByFields, as the reference router's multer
 * gives them to the backend. */
static int add_files(struct http_req *r, json_t *data, char *why, size_t whylen)
{
	json_t *files, *by_field;

	if (r->nfiles == 0)
		return 0;
	if (!json_is_object(data)) {
		snprintf(why, whylen, "files were uploaded but the data is not an object");
		return -1;
	}
	files = json_array();
	by_field = json_object();
	for (size_t i = 0; i < r->nfiles; i++) {
		const struct upload *u = &r->files[i];
		json_t *list = json_object_get(by_field, u->field);
		if (list == NULL) {
			list = json_array();
			json_object_set_new(by_field, u->field, list);
		}
		json_array_append_new(files, file_record(u, 1));
		json_array_append_new(list, file_record(u, 0));
	}
	json_object_set_new(data, "files", files);
	json_object_set_new(data, "filesByFields", by_field);
	return 0;
}

/* Build the packet for the backend from the request body. Returns the
 * packet, with *flags, agent id and request id for the supervisor, or NULL
 * with why (a 400). */
static json_t *build_packet(struct http_req *r, json_t *body, unsigned int *flags,
			    const char **agent_id, char request_id[37], char *why,
			    size_t whylen)
{
	enum endpoint ep = posts[r->post - 1].ep;
	json_t *data = NULL, *agent = json_object_get(body, "USED_AGENT_ID");
	const char *type, *subject;

	*flags = 0;
	*agent_id = NULL;
	request_id[0] = '\0';
	if (json_is_string(agent) && json_string_length(agent) > PACKET_MAX_ID_BYTES) {
		snprintf(why, whylen, "USED_AGENT_ID is longer than %d bytes",
			 PACKET_MAX_ID_BYTES);
		return NULL;
	}
	switch (ep) {
	case EP_REQUEST_AGENT: {
		json_t *pd = json_object_get(body, "provider_data");
		if (pd != NULL && !json_is_object(pd)) {
			snprintf(why, whylen, "provider_data is not an object");
			return NULL;
		}
		uuid4(request_id);
		data = json_pack("{s:O, s:s}", "provider_data", pd ? pd : json_object(),
				 "request_id", request_id);
		if (pd == NULL)
			json_decref(json_object_get(data, "provider_data"));
		*flags = ROUTE_HTTP_WAIT_DETAILS;
		type = "register_agent";
		subject = request_id;
		break;
	}
	case EP_SUBMIT_ONBOARDING: {
		json_t *pd = json_object_get(body, "provider_data");
		if (!json_is_object(pd) ||
		    !json_is_string(json_object_get(pd, "USED_AGENT_ID"))) {
			snprintf(why, whylen, "provider_data.USED_AGENT_ID is missing or not a string");
			return NULL;
		}
		if (json_string_length(json_object_get(pd, "USED_AGENT_ID")) >
		    PACKET_MAX_ID_BYTES) {
			snprintf(why, whylen, "provider_data.USED_AGENT_ID is longer than %d bytes",
				 PACKET_MAX_ID_BYTES);
			return NULL;
		}
		data = json_deep_copy(pd);
		*agent_id = json_string_value(json_object_get(pd, "USED_AGENT_ID"));
		json_object_del(data, "USED_AGENT_ID");
		if (json_object_get(data, "onboarding_data") == NULL)
			json_object_set_new(data, "onboarding_data", json_object());
		uuid4(request_id);
		json_object_set_new(data, "request_id", json_string(request_id));
		*flags = ROUTE_HTTP_WAIT_DETAILS | ROUTE_HTTP_FORGET_AGENT | ROUTE_HTTP_PRECIOUS;
		type = "submit_onboarding";
		subject = *agent_id;
		break;
	}
	case EP_SUBMIT_TASK:
	case EP_SUBMIT_METADATA:
		if (!json_is_string(agent)) {
			snprintf(why, whylen, "USED_AGENT_ID is missing or not a string");
			return NULL;
		}
		*agent_id = subject = json_string_value(agent);
		if (ep == EP_SUBMIT_TASK && json_object_get(body, "final_data") != NULL) {
			data = json_object_get(body, "final_data");
			/* The backend requires a data object (PROTOCOL.md, point 10). */
			if (!json_is_object(data)) {
				snprintf(why, whylen, "final_data is not an object");
				return NULL;
			}
			json_incref(data);
		} else {
			const char *name = ep == EP_SUBMIT_TASK ? "final_string_data" : "metadata";
			json_t *v = json_object_get(body, name);
			/* lws_spa cannot tell an empty field from a missing one */
			if (v == NULL || json_is_null(v)) {
				snprintf(why, whylen, "%s is missing or empty",
					 ep == EP_SUBMIT_TASK ? "final_data (or final_string_data)"
							      : "metadata");
				return NULL;
			}
			data = object_or_text(v, name, why, whylen);
			if (data == NULL)
				return NULL;
		}
		if (add_files(r, data, why, whylen) < 0) {
			json_decref(data);
			return NULL;
		}
		*flags = ROUTE_HTTP_PRECIOUS |
			 (ep == EP_SUBMIT_TASK ? ROUTE_HTTP_FORGET_AGENT : 0);
		type = ep == EP_SUBMIT_TASK ? "submit_unit" : "submit_metadata";
		break;
	case EP_LOG_ERROR: {
		json_t *e = json_object_get(body, "error_data");
		subject = json_is_string(agent) ? json_string_value(agent) : "";
		/* The backend requires a data object (PROTOCOL.md, point 10). */
		if (e == NULL || json_is_null(e))
			data = json_object();
		else if (json_is_object(e))
			data = json_incref(e);
		else
			data = json_pack("{s:O}", "error_data", e);
		type = "log_error";
		break;
	}
	default:
		snprintf(why, whylen, "no such endpoint");
		return NULL;
	}
	return json_pack("{s:s, s:s, s:o, s:o, s:f}", "packet_type", type,
			 "subject_id", subject, "data", data, "client_timestamp",
			 client_timestamp_of(body), "router_incoming_timestamp", wire_now());
}

static void remember_tail(struct http_req *r, const char *in, size_t len)
{
	size_t keep = sizeof r->tail;

	if (len >= keep) {
		memcpy(r->tail, in + len - keep, keep);
		r->tail_len = keep;
		return;
	}
	if (r->tail_len + len > keep) {
		size_t drop = r->tail_len + len - keep;
		memmove(r->tail, r->tail + drop, r->tail_len - drop);
		r->tail_len -= drop;
	}
	memcpy(r->tail + r->tail_len, in, len);
	r->tail_len += len;
}

/* Does the multipart body end with its closing boundary ("--B--")? */
static int multipart_complete(const struct http_req *r)
{
	char closing[sizeof r->boundary + 4];
	size_t n = r->tail_len, clen;

	while (n > 0 && (r->tail[n - 1] == '\r' || r->tail[n - 1] == '\n'))
		n--;
	clen = (size_t)snprintf(closing, sizeof closing, "--%s--", r->boundary);
	return n >= clen && memcmp(r->tail + n - clen, closing, clen) == 0;
}

static int post_complete(struct lws *wsi, struct session *s)
{
	struct http_req *r = s->req;
	char why[512], request_id[37];
	const char *agent_id;
	unsigned int flags;
	json_t *body, *packet;
	char *payload;
	size_t len;

	if (r->spa != NULL && (lws_spa_finalize(r->spa) < 0 || !multipart_complete(r)))
		r->spa_failed = 1;
	if (r->spa_failed)
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
				    r->spa_error ? r->spa_error
						 : "malformed multipart/form-data body", 0);
	body = body_object(r, why, sizeof why);
	if (body == NULL)
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, why, 0);
	snprintf(why, sizeof why, "the packet for the backend could not be built");
	packet = build_packet(r, body, &flags, &agent_id, request_id, why, sizeof why);
	if (packet == NULL) {
		json_decref(body);
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, why, 0);
	}
	payload = json_dumps(packet, JSON_COMPACT);
	json_decref(packet);
	if (payload == NULL)
		fatal("out of memory");
	len = strlen(payload);
	if (len + WIRE_OUTGOING_STAMP_BYTES > (size_t)worker_cfg.backend_max_frame_bytes) {
		snprintf(why, sizeof why, "the packet for the backend would be %zu bytes, "
			 "more than backend_max_frame_bytes (%lld)", len,
			 (long long)worker_cfg.backend_max_frame_bytes);
		free(payload);
		json_decref(body);
		return answer_error(wsi, s, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, why, 0);
	}
	/* The files first: recorded before the packet that names them. */
	for (size_t i = 0; i < r->nfiles; i++) {
		const struct upload *u = &r->files[i];

		ipc_pack_upload_stored(worker_ipc_packer(), u->stored, u->original, u->field,
				       agent_id, u->size, u->dev, u->ino);
	}
	r->pending = idtable_add(&pending, wsi);
	ipc_pack_http_request(worker_ipc_packer(), r->pending, flags, agent_id,
			      request_id[0] ? request_id : NULL, payload, len);
	worker_ipc_check();
	r->committed = 1;
	free(payload);
	json_decref(body);
	return 0;
}

static int header_value(struct lws *wsi, enum lws_token_indexes token, char *out,
			size_t len)
{
	out[0] = '\0';
	if (lws_hdr_total_length(wsi, token) <= 0)
		return -1;
	return lws_hdr_copy(wsi, out, (int)len, token) < 0 ? -1 : 0;
}

static int post_start(struct lws *wsi, struct session *s, const char *uri)
{
	struct http_req *r;
	char value[256];
	long long length;
	char *end;
	size_t i, in_memory;

	for (i = 0; i < sizeof posts / sizeof posts[0]; i++)
		if (strcmp(uri, posts[i].path) == 0)
			break;
	if (i == sizeof posts / sizeof posts[0])
		return answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 1);
	r = req_get(s);
	r->post = (int)i + 1;
	/* lws reads the raw value itself (into 32 bytes): one it cannot read
	 * it takes for a 100 MB body, while lws_hdr_copy() below gives the
	 * digits. So the raw value too must be digits only, and short. */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 18)
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
				    "bad Content-Length", 1);
	if (header_value(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, value, sizeof value) < 0)
		/* lws cannot read chunked bodies (LWS-NOTES trap 5) */
		return answer_error(wsi, s, HTTP_STATUS_LENGTH_REQUIRED,
				    "Content-Length is required", 1);
	/* Both: a proxy in front that honours Transfer-Encoding would see
	 * another request than this one (request smuggling). */
	if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
				    "Transfer-Encoding with Content-Length", 1);
	/* Digits only: strtoll() also takes "+42", " 42" and "0x"-less junk. */
	if (value[0] == '\0' || strspn(value, "0123456789") != strlen(value) ||
	    strlen(value) > 18)
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
				    "bad Content-Length", 1);
	length = strtoll(value, &end, 10);
	if (length > worker_cfg.max_body_bytes) {
		snprintf(value, sizeof value, "the body is larger than max_body_bytes (%lld)",
			 (long long)worker_cfg.max_body_bytes);
		return answer_error(wsi, s, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, value, 1);
	}
	r->expected = (size_t)length;
	header_value(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, value, sizeof value);
	/* Only uploaded files may make a body large (they go to disk): what
	 * is kept in memory becomes the packet for the backend, bounded by
	 * backend_max_frame_bytes (form fields get twice that, so that a
	 * field too large for the packet is a 413 from post_complete(), not a
	 * storage overflow). */
	in_memory = strncasecmp(value, "multipart/form-data", 19) == 0
			    ? (size_t)(length < 2 * worker_cfg.backend_max_frame_bytes
					       ? length : 2 * worker_cfg.backend_max_frame_bytes) + 1024
			    : (size_t)length + 1;
	if (strncasecmp(value, "multipart/form-data", 19) != 0 &&
	    length > worker_cfg.backend_max_frame_bytes) {
		snprintf(value, sizeof value, "a JSON body larger than backend_max_frame_bytes "
			 "(%lld) cannot become a packet for the backend",
			 (long long)worker_cfg.backend_max_frame_bytes);
		return answer_error(wsi, s, HTTP_STATUS_REQ_ENTITY_TOO_LARGE, value, 1);
	}
	if (body_memory + in_memory > (size_t)worker_cfg.body_memory_bytes) {
		worker_stats.bodies_refused++;
		log_warn("request bodies in memory would exceed body_memory_bytes (%lld); "
			 "answered 503 (%llu so far)", (long long)worker_cfg.body_memory_bytes,
			 (unsigned long long)worker_stats.bodies_refused);
		return answer_error(wsi, s, HTTP_STATUS_SERVICE_UNAVAILABLE,
				    "too many requests in progress; try again", 1);
	}
	r->memory = in_memory;
	body_memory += in_memory;
	/* The whole body within body_timeout plus its size at body_min_rate:
	 * a body that trickles in is cut off, whatever its pace. */
	lws_set_timer_usecs(wsi, (lws_usec_t)((worker_cfg.body_timeout +
					       (double)length / (double)worker_cfg.body_min_rate) *
					      LWS_US_PER_SEC));
	if (strncasecmp(value, "multipart/form-data", 19) == 0) {
		lws_spa_create_info_t info = {
			.param_names = form_fields,
			.count_params = (int)(sizeof form_fields / sizeof form_fields[0]),
			.max_storage = (int)in_memory,
			.opt_cb = upload_cb,
			.opt_data = s,
		};
		const char *b = strstr(value, "boundary=");
		size_t blen;

		r->multipart = 1;
		if (b != NULL) {
			b += 9;
			if (*b == '"')
				b++;
			blen = strcspn(b, "\";\t ");
			if (blen > 0 && blen < sizeof r->boundary) {
				memcpy(r->boundary, b, blen);
				r->boundary[blen] = '\0';
			}
		}
		if (r->boundary[0] == '\0')
			return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
					    "multipart/form-data without a boundary", 1);
		r->spa = lws_spa_create_via_info(wsi, &info);
		if (r->spa == NULL)
			return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST,
					    "malformed multipart/form-data request", 1);
	} else {
		r->body = malloc(r->expected + 1);
		if (r->body == NULL)
			fatal("out of memory");
	}
	if (length == 0)
		return post_complete(wsi, s);
	return 0;
}

static int post_body(struct lws *wsi, struct session *s, const char *in, size_t len)
{
	struct http_req *r = s->req;

	(void)wsi;
	/* already answered (an error), or not a POST (a GET with a body): the
	 * rest is dropped */
	if (r == NULL || r->answer != NULL || r->post == 0)
		return 0;
	if (r->spa != NULL) {
		remember_tail(r, in, len);
		if (!r->spa_failed && lws_spa_process(r->spa, in, (int)len) < 0)
			r->spa_failed = 1;
		return 0;
	}
	if (r->len + len > r->expected)
		len = r->expected - r->len;
	memcpy(r->body + r->len, in, len);
	r->len += len;
	return 0;
}

/* ---- dispatch ---- */

static int on_request(struct lws *wsi, struct session *s)
{
	char *uri = NULL, json[64];
	int ulen = 0;
	int method = lws_http_get_uri_and_method(wsi, &uri, &ulen);
	struct timeval tv;

	req_free(s);
	s->started = wire_now(); /* its time is counted */
	s->endpoint = method >= 0 && uri != NULL ? endpoint_of(uri, method == LWSHUMETH_POST)
						 : IPC_EP_OTHER;
	if (worker_cfg.access_log && method >= 0 && uri != NULL) {
		static const char *const names[] = { "GET", "POST", "OPTIONS", "PUT",
						     "PATCH", "DELETE", "CONNECT", "HEAD" };
		struct http_req *r = req_get(s);

		r->started = s->started;
		snprintf(r->method, sizeof r->method, "%s",
			 (size_t)method < sizeof names / sizeof names[0] ? names[method] : "?");
		snprintf(r->path, sizeof r->path, "%.*s", ulen, uri);
	}
	if (method < 0 || uri == NULL)
		return answer_error(wsi, s, HTTP_STATUS_BAD_REQUEST, "bad request", 1);
	if (worker_is_metrics_connection(wsi)) {
		struct http_req *r;

		if ((method != LWSHUMETH_GET && method != LWSHUMETH_HEAD) ||
		    strcmp(uri, "/metrics") != 0)
			return answer_error(wsi, s, HTTP_STATUS_NOT_FOUND,
					    "only /metrics is served here", 0);
		r = req_get(s);
		r->pending = idtable_add(&pending, wsi);
		ipc_pack_metrics_request(worker_ipc_packer(), r->pending);
		worker_ipc_check();
		return 0;
	}
	log_debug("%s %s", method == LWSHUMETH_POST ? "POST" : "GET", uri);
	if (method == LWSHUMETH_POST)
		return post_start(wsi, s, uri);
	if (method != LWSHUMETH_GET && method != LWSHUMETH_HEAD)
		return answer_error(wsi, s, HTTP_STATUS_METHOD_NOT_ALLOWED,
				    "method not allowed", 1);
	if (strcmp(uri, "/is_alive") == 0)
		return answer_json(wsi, s, HTTP_STATUS_OK, "{\"status\": \"Alive!\"}");
	if (strcmp(uri, "/get_timestamp") == 0) {
		gettimeofday(&tv, NULL);
		snprintf(json, sizeof json, "{\"timestamp\": %lld}",
			 (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
		return answer_json(wsi, s, HTTP_STATUS_OK, json);
	}
	if (strcmp(uri, "/task_index") == 0 || strcmp(uri, "/welcome") == 0 ||
	    strcmp(uri, "/") == 0)
		return serve_file(wsi, s, "/index.html");
	if (strcmp(uri, "/task_config.json") == 0)
		check_task_version(wsi);
	if (strncmp(uri, "/download_file/", 15) == 0)
		return serve_download(wsi, s, uri + 15);
	return serve_file(wsi, s, uri);
}

int http_callback(struct lws *wsi, enum lws_callback_reasons reason,
		  struct session *s, void *in, size_t len)
{
	switch (reason) {
	case LWS_CALLBACK_ADD_HEADERS: { /* the WebSocket upgrade answer */
		struct lws_process_html_args *args = in;
		unsigned char *p = (unsigned char *)args->p;
		if (add_worker_header(wsi, &p, p + args->max_len))
			return -1;
		args->p = (char *)p;
		return 0;
	}
	case LWS_CALLBACK_HTTP:
		return on_request(wsi, s);
	case LWS_CALLBACK_HTTP_BODY:
		return post_body(wsi, s, in, len);
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		lws_set_timer_usecs(wsi, LWS_SET_TIMER_USEC_CANCEL);
		if (s->req == NULL || s->req->answer != NULL || s->req->pending)
			return 0;
		return post_complete(wsi, s);
	case LWS_CALLBACK_TIMER: /* the body's deadline (post_start) */
		if (s->req == NULL || s->req->answer != NULL || s->req->pending)
			return 0;
		worker_stats.body_timeouts++;
		log_info("a request body was not complete in time (%zu of %zu bytes); "
			 "answered 408 (%llu so far)", s->req->len, s->req->expected,
			 (unsigned long long)worker_stats.body_timeouts);
		return answer_error(wsi, s, HTTP_STATUS_REQUEST_TIMEOUT,
				    "the request body did not arrive in time", 1);
	case LWS_CALLBACK_HTTP_WRITEABLE:
		return on_writeable(wsi, s);
	case LWS_CALLBACK_HTTP_FILE_COMPLETION:
		worker_stats.http_requests++;
		access_line(wsi, s->req, HTTP_STATUS_OK, -1);
		count_time(s);
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	case LWS_CALLBACK_CLOSED_HTTP:
		req_free(s);
		return 0;
	default:
		return 0;
	}
}
