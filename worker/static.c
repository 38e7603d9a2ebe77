/* Files served by the worker: the files of static_dir (the task page among
 * them) and downloads of stored uploads.
 *
 * Static files are streamed by lws_serve_http_file(); the lookup is ours,
 * so that 404s carry our headers too (lws mounts answer errors without
 * them and send no-store), and so that a path can never leave its folder:
 * ".." segments are refused; symlinks placed in static_dir are followed
 * (Mephisto's link_task_source links the task's bundle there). A GET for
 * task_config.json also tells the supervisor, once per version, when the
 * task page's mephisto-task differs from the one the task expects.
 *
 * A download is served only when the supervisor has recorded it, from a
 * descriptor opened with O_NOFOLLOW and checked to be the very file
 * recorded, and sent a piece per WRITEABLE callback. */
#include "http.h"

#include "../core/ipc.h"
#include "../core/log.h"
#include "../core/packet.h"
#include "wire.h"

#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* mephisto-task versions this worker already reported. */
static char *reported_versions[32];
static size_t nreported;

void static_free_all(void)
{
	for (size_t i = 0; i < nreported; i++)
		free(reported_versions[i]);
	nreported = 0;
}

/* ---- MIME types ---- */

/* Types lws lacks, and the fallback for any other extension (lws answers
 * 415 for unknown ones: LWS-NOTES trap 4). */
static const struct lws_protocol_vhost_options mimes[] = {
	{ &mimes[1], NULL, ".wav", "audio/wav" },
	{ &mimes[2], NULL, ".mp3", "audio/mpeg" },
	{ &mimes[3], NULL, ".mp4", "video/mp4" },
	{ &mimes[4], NULL, ".csv", "text/csv" },
	{ &mimes[5], NULL, ".pdf", "application/pdf" },
	{ &mimes[6], NULL, ".webp", "image/webp" },
	{ &mimes[7], NULL, ".wasm", "application/wasm" },
	{ &mimes[8], NULL, ".map", "application/json" },
	{ &mimes[9], NULL, ".mjs", "text/javascript" },
	{ NULL, NULL, "*", "application/octet-stream" }, /* the fallback, last */
};
static const struct lws_http_mount mime_mount = { .extra_mimetypes = mimes };

const char *static_mimetype(const char *name)
{
	const char *type = lws_get_mimetype(name, &mime_mount);

	return type ? type : "application/octet-stream";
}

/* ---- static_dir ---- */

/* Map a request path to a regular file in static_dir, or fail. The path
 * itself can never leave the folder (no ".." segment); symlinks the
 * operator put there are followed (Mephisto's link_task_source links a
 * task's bundle into it). Downloads do not come here: see
 * static_serve_download. */
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
	if (realpath(http_env->cfg->static_dir, root) == NULL)
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
	int n, head;

	if (resolve_static(uri, path, sizeof path) < 0)
		return http_answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
	type = static_mimetype(path);
	if (http_add_router_headers(wsi, &p, headers + sizeof headers - 1))
		return -1;
	*p = '\0';
	/* A HEAD's transaction lws completes inside lws_serve_http_file(),
	 * which frees the session (see http.c): the request is done before,
	 * and s is not used after. A GET's ends at FILE_COMPLETION. */
	head = lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0;
	if (head)
		http_file_done(wsi, s, HTTP_STATUS_OK);
	n = lws_serve_http_file(wsi, path, type, (const char *)headers,
				(int)(p - headers));
	if (n < 0)
		return -1;
	if (n > 0) { /* lws could not open it, and answered 404 itself */
		if (!head)
			http_file_done(wsi, s, HTTP_STATUS_NOT_FOUND);
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	}
	return 0;
}

/* ---- task_config.json and the mephisto-task version ---- */

static void expected_version(char *out, size_t len)
{
	char path[PATH_MAX + 32];
	json_t *config, *v;

	snprintf(out, len, "%s", http_env->cfg->mephisto_task_version);
	snprintf(path, sizeof path, "%s/task_config.json", http_env->cfg->static_dir);
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
	http_printable_copy(reported, sizeof reported, v, strlen(v));
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
	http_env->send(&(struct ipc_message){
		.type = IPC_VERSION_MISMATCH,
		.version_mismatch = { .version = v, .packet = payload, .len = strlen(payload) } });
	free(payload);
}

int static_serve(struct lws *wsi, struct session *s, const char *uri)
{
	/* the task page, under Mephisto's names for it */
	if (strcmp(uri, "/task_index") == 0 || strcmp(uri, "/welcome") == 0 ||
	    strcmp(uri, "/") == 0)
		return serve_file(wsi, s, "/index.html");
	if (strcmp(uri, "/task_config.json") == 0)
		check_task_version(wsi);
	return serve_file(wsi, s, uri);
}

/* ---- downloads of stored uploads ---- */

int static_serve_download(struct lws *wsi, struct session *s, const char *name)
{
	struct http_req *r;
	uint64_t id;

	if (!upload_is_stored_name(name))
		return http_answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
	r = http_req_get(s);
	memcpy(r->download, name, UPLOAD_NAME_LEN + 1);
	id = http_pending_add(wsi, r);
	http_env->send(&(struct ipc_message){ .type = IPC_DOWNLOAD_CHECK,
					   .download_check = { .req = id, .stored = name } });
	return 0;
}

/* The supervisor's DOWNLOAD_INFO: whether it recorded the upload, and the
 * identity of the file it recorded. */
void http_download_info(uint64_t id, int found, uint64_t dev, uint64_t ino)
{
	struct lws *wsi = http_pending_take(id);
	struct session *s;
	struct http_req *r;
	char path[PATH_MAX];
	struct stat st;
	int fd;

	if (wsi == NULL)
		return; /* the client is gone */
	s = lws_wsi_user(wsi);
	r = s->req;
	if (!found) {
		http_answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
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
		http_answer_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found", 0);
		return;
	}
	if (st.st_size == 0 || lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0) {
		close(fd);
		http_answer_sized(wsi, s, HTTP_STATUS_OK, "application/octet-stream", NULL, 0,
				  (lws_filepos_t)st.st_size, 0);
		return;
	}
	r->file_fd = fd;
	r->file_left = (size_t)st.st_size;
	http_answer_sized(wsi, s, HTTP_STATUS_OK, "application/octet-stream", NULL, 0,
			  (lws_filepos_t)st.st_size, 0);
}

/* The next piece of a download, read from the descriptor checked when it
 * was opened (never by its name again). */
int static_send_piece(struct lws *wsi, struct session *s)
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
	http_req_free(s);
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}
