/* multipart/form-data bodies of the worker's POSTs, and the files they
 * carry.
 *
 * lws_spa parses the body: the form fields the endpoints read are kept in
 * memory, and each file is streamed to upload_dir under a name of ours
 * (UPLOAD_PREFIX and random hex digits, never the client's), opened with
 * O_EXCL and O_NOFOLLOW, and described to the backend as the reference
 * router's multer does. The files of a request that does not reach the
 * backend are deleted; once handed over they belong to the backend, and a
 * download (static.c) serves them only when the supervisor recorded them. */
#include "http.h"

#include "../core/log.h"
#include "../core/xalloc.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* The form fields kept, in lws_spa's order. */
static const char *const form_fields[] = {
	"USED_AGENT_ID", "final_string_data", "metadata", "client_timestamp",
};

void random_hex(char *out, size_t bytes)
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

/* 1 when the len bytes at s are valid UTF-8 (jansson's own check). */
static int is_utf8(const char *s, size_t len)
{
	json_t *t = json_stringn(s, len);

	json_decref(t);
	return t != NULL;
}

int upload_is_stored_name(const char *name)
{
	if (strlen(name) != UPLOAD_NAME_LEN ||
	    strncmp(name, UPLOAD_PREFIX, strlen(UPLOAD_PREFIX)) != 0)
		return 0;
	for (const char *c = name + strlen(UPLOAD_PREFIX); *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
			return 0;
	return 1;
}

int upload_path(char *out, size_t len, const char *stored)
{
	const char *dir = http_env->cfg->upload_dir;
	size_t dirlen = strlen(dir);
	int n = snprintf(out, len, "%.*s%s%s", (int)(len - UPLOAD_NAME_LEN - 2), dir,
			 dirlen && dir[dirlen - 1] == '/' ? "" : "/", stored);

	return n > 0 && (size_t)n < len ? 0 : -1;
}

/* lws_spa's callback for the files of a body (data: the session). */
static int upload_cb(void *data, const char *name, const char *filename,
		     char *buf, int len, enum lws_spa_fileupload_states state)
{
	struct http_req *r = ((struct session *)data)->req;
	struct upload *u;
	struct stat st;
	const char *dir = http_env->cfg->upload_dir;
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
		u->field = xstrdup(name);
		u->original = xstrdup(filename);
		u->mimetype = static_mimetype(filename);
		u->path = xmalloc(dirlen + UPLOAD_NAME_LEN + 2);
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

/* ---- the body ---- */

const char *upload_form_start(struct lws *wsi, struct session *s,
			      const char *content_type, size_t max_storage)
{
	struct http_req *r = s->req;
	lws_spa_create_info_t info = {
		.param_names = form_fields,
		.count_params = (int)(sizeof form_fields / sizeof form_fields[0]),
		.max_storage = (int)max_storage,
		.opt_cb = upload_cb,
		.opt_data = s,
	};
	const char *b = strstr(content_type, "boundary=");
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
		return "multipart/form-data without a boundary";
	r->spa = lws_spa_create_via_info(wsi, &info);
	if (r->spa == NULL)
		return "malformed multipart/form-data request";
	return NULL;
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

void upload_form_body(struct http_req *r, const char *in, size_t len)
{
	remember_tail(r, in, len);
	if (!r->spa_failed && lws_spa_process(r->spa, in, (int)len) < 0)
		r->spa_failed = 1;
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

const char *upload_form_end(struct http_req *r)
{
	if (r->spa != NULL && (lws_spa_finalize(r->spa) < 0 || !multipart_complete(r)))
		r->spa_failed = 1;
	if (!r->spa_failed)
		return NULL;
	return r->spa_error ? r->spa_error : "malformed multipart/form-data body";
}

json_t *upload_form_object(struct http_req *r, char *why, size_t whylen)
{
	json_t *obj = json_object();

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

/* ---- the files, for the backend ---- */

static json_t *file_record(const struct upload *u, int with_field)
{
	json_t *rec = json_object();

	if (with_field)
		json_object_set_new(rec, "fieldname", json_string(u->field));
	json_object_set_new(rec, "originalname", json_string(u->original));
	json_object_set_new(rec, "encoding", json_string("7bit"));
	json_object_set_new(rec, "mimetype", json_string(u->mimetype));
	json_object_set_new(rec, "destination", json_string(http_env->cfg->upload_dir));
	json_object_set_new(rec, "filename", json_string(u->stored));
	json_object_set_new(rec, "path", json_string(u->path));
	json_object_set_new(rec, "size", json_integer((json_int_t)u->size));
	return rec;
}

int upload_add_files(const struct http_req *r, json_t *data, char *why, size_t whylen)
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

/* ---- the end of a request ---- */

void upload_discard(struct http_req *r)
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

void upload_free(struct http_req *r)
{
	if (r->spa != NULL)
		lws_spa_destroy(r->spa);
	if (r->fd >= 0)
		close(r->fd);
	for (size_t i = 0; i < r->nfiles; i++) {
		/* A refused or abandoned request leaves nothing behind. */
		if (!r->committed && unlink(r->files[i].path) < 0 && errno != ENOENT)
			log_warn("cannot remove upload %s: %s", r->files[i].path,
				 strerror(errno));
		free(r->files[i].field);
		free(r->files[i].original);
		free(r->files[i].path);
	}
}
