/* The supervisor's record of the uploads the workers stored: download_file
 * serves a file only when it is recorded here, and only the very file
 * recorded (device and inode); old ones are deleted after upload_retention.
 * Kept in memory (for the workers' checks) and in the state database. */
#ifndef MR_UPLOADS_H
#define MR_UPLOADS_H

#include "store.h"

#include <stdint.h>

struct uploads;

/* The record, loaded from the store. */
struct uploads *uploads_new(struct store *store, char *err, size_t errlen);
void uploads_free(struct uploads *u);

/* A worker stored an upload: record it (memory now, the store with the
 * next commit). */
void uploads_add(struct uploads *u, const struct upload_record *r);

/* 1 and the file's identity when stored is recorded, else 0. */
int uploads_find(const struct uploads *u, const char *stored, uint64_t *dev,
		 uint64_t *ino);

/* Delete the files (in dir) and records of uploads older than retention
 * seconds (0: keep them). Returns how many went. */
size_t uploads_expire(struct uploads *u, const char *dir, double retention, double now);

size_t uploads_count(const struct uploads *u);

#endif
