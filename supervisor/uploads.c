#include "uploads.h"

#include "../core/log.h"
#include "../core/map.h"
#include "../core/xalloc.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct entry {
	uint64_t dev, ino;
	double created;
};

struct uploads {
	struct store *store;
	struct map *files; /* stored name -> struct entry */
};

static void remember(struct uploads *u, const struct upload_record *r)
{
	struct entry *e = xmalloc(sizeof *e);

	e->dev = r->dev;
	e->ino = r->ino;
	e->created = r->created;
	free(map_put(u->files, r->stored, strlen(r->stored), e));
}

static void loaded(void *arg, const struct upload_record *r)
{
	remember(arg, r);
}

struct uploads *uploads_new(struct store *store, char *err, size_t errlen)
{
	struct uploads *u = xcalloc(1, sizeof *u);

	u->store = store;
	u->files = map_new();
	if (store_load_uploads(store, loaded, u, err, errlen) < 0) {
		uploads_free(u);
		return NULL;
	}
	return u;
}

void uploads_free(struct uploads *u)
{
	size_t pos = 0;
	void *value;

	if (u == NULL)
		return;
	while (map_next(u->files, &pos, NULL, NULL, &value))
		free(value);
	map_free(u->files);
	free(u);
}

void uploads_add(struct uploads *u, const struct upload_record *r)
{
	remember(u, r);
	store_stage_upload(u->store, r);
}

int uploads_find(const struct uploads *u, const char *stored, uint64_t *dev,
		 uint64_t *ino)
{
	const struct entry *e = map_get(u->files, stored, strlen(stored));

	if (e == NULL)
		return 0;
	*dev = e->dev;
	*ino = e->ino;
	return 1;
}

size_t uploads_count(const struct uploads *u) { return map_count(u->files); }

/* The expired ones 64 at a time: a map is not changed while walked. */
size_t uploads_expire(struct uploads *u, const char *dir, double retention, double now)
{
	size_t gone = 0, n;

	if (retention <= 0)
		return 0;
	do {
		char *names[64];
		size_t pos = 0, len;
		const void *key;
		void *value;

		n = 0;
		while (n < 64 && map_next(u->files, &pos, &key, &len, &value))
			if (now - ((struct entry *)value)->created >= retention)
				names[n++] = xmemdup0(key, len);
		for (size_t i = 0; i < n; i++) {
			char path[PATH_MAX];
			struct stat st;
			struct entry *e = map_del(u->files, names[i], strlen(names[i]));

			snprintf(path, sizeof path, "%s%s%s", dir,
				 dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/", names[i]);
			/* only the file recorded, not one put in its place */
			if (lstat(path, &st) == 0 && S_ISREG(st.st_mode) &&
			    (uint64_t)st.st_dev == e->dev && (uint64_t)st.st_ino == e->ino &&
			    unlink(path) < 0 && errno != ENOENT)
				log_warn("upload_retention: cannot remove %s: %s", path,
					 strerror(errno));
			store_stage_upload_gone(u->store, names[i]);
			free(e);
			free(names[i]);
			gone++;
		}
	} while (n == 64);
	if (gone > 0)
		log_info("upload_retention: removed %zu upload%s older than %.0f s", gone,
			 gone == 1 ? "" : "s", retention);
	return gone;
}
