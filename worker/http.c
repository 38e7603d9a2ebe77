/* HTTP requests of one worker: the router's own endpoints and the files of
 * static_dir.
 *
 * Files are streamed by lws_serve_http_file(); the lookup is ours so that
 * every answer, 404s included, carries X-Router-Worker and Cache-Control:
 * no-cache (lws's mounts answer errors without our headers and send
 * no-store), and so that a path can never leave static_dir: ".." segments
 * are refused and the resolved path (symlinks followed) must stay inside
 * the resolved static_dir. */
#include "worker.h"

#include "../core/log.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

#define HEADER_BUF 2048

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

/* Answer with a complete body: headers now, the body on WRITEABLE. */
static int respond(struct lws *wsi, struct session *s, unsigned int status,
		   const char *type, const char *body, size_t len, int head_only)
{
	unsigned char buf[LWS_PRE + HEADER_BUF];
	unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + sizeof buf - 1;

	if (lws_add_http_common_headers(wsi, status, type, (lws_filepos_t)len, &p, end) ||
	    add_router_headers(wsi, &p, end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	if (head_only || len == 0)
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	free(s->body);
	s->body = malloc(LWS_PRE + len);
	if (s->body == NULL)
		fatal("out of memory");
	memcpy(s->body + LWS_PRE, body, len);
	s->body_len = len;
	lws_callback_on_writable(wsi);
	return 0;
}

static int respond_json(struct lws *wsi, struct session *s, unsigned int status,
			const char *json, int head_only)
{
	return respond(wsi, s, status, "application/json", json, strlen(json),
		       head_only);
}

static int respond_error(struct lws *wsi, struct session *s, unsigned int status,
			 const char *message, int head_only)
{
	char json[256];

	snprintf(json, sizeof json, "{\"error\": \"%s\"}", message);
	return respond_json(wsi, s, status, json, head_only);
}

static int on_writeable(struct lws *wsi, struct session *s)
{
	int n;

	if (s->body == NULL)
		return 0;
	n = lws_write(wsi, (unsigned char *)s->body + LWS_PRE, s->body_len,
		      LWS_WRITE_HTTP_FINAL);
	free(s->body);
	s->body = NULL;
	if (n < (int)s->body_len || s->close_after)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Map a request path to a file inside static_dir, or answer why not. */
static int static_path(const char *uri, char *out, size_t outlen)
{
	char joined[PATH_MAX * 2], root[PATH_MAX];
	const char *seg;
	struct stat st;
	size_t rootlen;

	if (uri[0] != '/')
		return -1;
	for (seg = uri; seg != NULL; seg = strchr(seg + 1, '/'))
		if (strncmp(seg, "/..", 3) == 0 && (seg[3] == '/' || seg[3] == '\0'))
			return -1;
	if (realpath(worker_cfg.static_dir, root) == NULL)
		return -1;
	snprintf(joined, sizeof joined, "%s%s%s", root, uri,
		 uri[strlen(uri) - 1] == '/' ? "index.html" : "");
	if (realpath(joined, out) == NULL || strlen(out) >= outlen)
		return -1;
	rootlen = strlen(root);
	if (strncmp(out, root, rootlen) != 0 || out[rootlen] != '/')
		return -1;
	if (stat(out, &st) == 0 && S_ISDIR(st.st_mode)) {
		snprintf(joined, sizeof joined, "%s/index.html", out);
		if (realpath(joined, out) == NULL)
			return -1;
	}
	return stat(out, &st) == 0 && S_ISREG(st.st_mode) ? 0 : -1;
}

static int serve_static(struct lws *wsi, struct session *s, const char *uri,
			int head_only)
{
	char path[PATH_MAX];
	unsigned char headers[HEADER_BUF], *p = headers;
	const char *type;
	int n;

	if (static_path(uri, path, sizeof path) < 0)
		return respond_error(wsi, s, HTTP_STATUS_NOT_FOUND, "not found",
				     head_only);
	type = lws_get_mimetype(path, &mime_mount);
	if (add_router_headers(wsi, &p, headers + sizeof headers - 1))
		return -1;
	*p = '\0';
	n = lws_serve_http_file(wsi, path, type, (const char *)headers,
				(int)(p - headers));
	if (n < 0 || (n > 0 && lws_http_transaction_completed(wsi)))
		return -1;
	return 0;
}

static int on_request(struct lws *wsi, struct session *s)
{
	char *uri = NULL;
	int ulen = 0;
	int method = lws_http_get_uri_and_method(wsi, &uri, &ulen);
	int head_only = method == LWSHUMETH_HEAD;
	char json[64];

	if (method < 0 || uri == NULL)
		return respond_error(wsi, s, HTTP_STATUS_BAD_REQUEST, "bad request", 0);
	log_debug("%s %s", method == LWSHUMETH_GET ? "GET" :
			   method == LWSHUMETH_POST ? "POST" : "HTTP", uri);
	if (method != LWSHUMETH_GET && method != LWSHUMETH_HEAD) {
		/* No POST endpoint exists yet; refuse without reading a body,
		 * and close so unread body bytes are not parsed as a request. */
		s->close_after = 1;
		return respond_error(wsi, s, HTTP_STATUS_METHOD_NOT_ALLOWED,
				     "method not allowed", 0);
	}
	if (strcmp(uri, "/is_alive") == 0)
		return respond_json(wsi, s, HTTP_STATUS_OK, "{\"status\": \"Alive!\"}",
				    head_only);
	if (strcmp(uri, "/get_timestamp") == 0) {
		struct timeval tv;
		gettimeofday(&tv, NULL);
		snprintf(json, sizeof json, "{\"timestamp\": %lld}",
			 (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000);
		return respond_json(wsi, s, HTTP_STATUS_OK, json, head_only);
	}
	return serve_static(wsi, s, uri, head_only);
}

int http_callback(struct lws *wsi, enum lws_callback_reasons reason,
		  struct session *s, void *in, size_t len)
{
	(void)len;
	switch (reason) {
	case LWS_CALLBACK_ADD_HEADERS: {
		struct lws_process_html_args *args = in;
		unsigned char *p = (unsigned char *)args->p;
		if (add_worker_header(wsi, &p, p + args->max_len))
			return -1;
		args->p = (char *)p;
		return 0;
	}
	case LWS_CALLBACK_HTTP:
		return on_request(wsi, s);
	case LWS_CALLBACK_HTTP_WRITEABLE:
		return on_writeable(wsi, s);
	case LWS_CALLBACK_HTTP_FILE_COMPLETION:
		return lws_http_transaction_completed(wsi) ? -1 : 0;
	case LWS_CALLBACK_CLOSED_HTTP:
		free(s->body);
		s->body = NULL;
		return 0;
	default:
		return 0;
	}
}
