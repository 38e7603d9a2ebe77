/* A router's memory and CPU, read from /proc: the process given with
 * --pid (the supervisor) plus its direct children (the workers). */
#include "bench.h"

#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

struct stat_fields {
	int ppid;
	int kthread;
	double cpu;       /* utime + stime */
	double children;  /* cutime + cstime: reaped children */
	uint64_t rss;
};

/* /proc/PID/stat: "pid (comm) state ppid ... utime(14) stime(15) ...
 * rss(24)". comm may hold spaces and parentheses: fields start after the
 * last ')'. */
static int read_stat(int pid, struct stat_fields *f)
{
	static long tick, page;
	char path[64], buf[1024], *p;
	unsigned long long utime = 0, stime = 0, cutime = 0, cstime = 0, flags = 0;
	long long rss = 0;
	ssize_t n;
	int fd, field;

	if (tick == 0) {
		tick = sysconf(_SC_CLK_TCK);
		page = sysconf(_SC_PAGESIZE);
	}
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	if (p == NULL)
		return -1;
	p++;
	/* p is at " state ppid ...": field 3 is next */
	for (field = 3; field <= 24 && *p != '\0'; field++) {
		char *end;

		while (*p == ' ')
			p++;
		switch (field) {
		case 4: f->ppid = (int)strtol(p, &end, 10); break;
		case 9: flags = strtoull(p, &end, 10); break;
		case 16: cutime = strtoull(p, &end, 10); break;
		case 17: cstime = strtoull(p, &end, 10); break;
		case 14: utime = strtoull(p, &end, 10); break;
		case 15: stime = strtoull(p, &end, 10); break;
		case 24: rss = strtoll(p, &end, 10); break;
		default: end = p; break;
		}
		while (*end != ' ' && *end != '\0')
			end++;
		p = end;
	}
	if (field <= 24)
		return -1;
	f->cpu = (double)(utime + stime) / (double)tick;
	f->children = (double)(cutime + cstime) / (double)tick;
	f->kthread = (flags & 0x00200000) != 0; /* PF_KTHREAD */
	f->rss = rss > 0 ? (uint64_t)rss * (uint64_t)page : 0;
	return 0;
}

/* Call fn for every process in /proc whose stat could be read; -1 when
 * /proc cannot be listed. */
static int for_each_proc(void (*fn)(int pid, const struct stat_fields *f, void *arg),
			 void *arg)
{
	struct stat_fields f;
	struct dirent *d;
	DIR *dir = opendir("/proc");

	if (dir == NULL)
		return -1;
	while ((d = readdir(dir)) != NULL) {
		int pid;

		if (!isdigit((unsigned char)d->d_name[0]))
			continue;
		pid = atoi(d->d_name);
		if (read_stat(pid, &f) == 0)
			fn(pid, &f, arg);
	}
	closedir(dir);
	return 0;
}

struct sample_walk {
	struct proc_sample *s;
	int root;
};

static void add_child(int pid, const struct stat_fields *f, void *arg)
{
	struct sample_walk *w = arg;

	if (pid == w->root || f->ppid != w->root)
		return;
	w->s->nprocs++;
	w->s->rss += f->rss;
	w->s->cpu += f->cpu;
}

void proc_sample(int pid, struct proc_sample *s)
{
	struct stat_fields f;
	struct sample_walk w = { s, pid };

	memset(s, 0, sizeof *s);
	s->at = clock_monotonic();
	if (pid <= 0 || read_stat(pid, &f) < 0)
		return;
	s->ok = 1;
	s->nprocs = 1;
	s->rss = f.rss;
	s->cpu = f.cpu;
	for_each_proc(add_child, &w);
}

double proc_self_cpu(void)
{
	struct rusage self, kids;

	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &kids);
	return (double)(self.ru_utime.tv_sec + self.ru_stime.tv_sec +
			kids.ru_utime.tv_sec + kids.ru_stime.tv_sec) +
	       (double)(self.ru_utime.tv_usec + self.ru_stime.tv_usec +
			kids.ru_utime.tv_usec + kids.ru_stime.tv_usec) / 1e6;
}

/* Whether pid is one of ours: the router's tree (root and its children)
 * or this process and its children. */
static int excluded(int pid, const struct stat_fields *f, int root)
{
	int self = getpid();

	return pid == root || pid == self || (root > 0 && f->ppid == root) ||
	       f->ppid == self;
}

static int cmp_int(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

struct others_walk {
	struct others *o;
	int root;
	double used;
};

static void remember_other(int pid, const struct stat_fields *f, void *arg)
{
	struct others_walk *w = arg;
	struct others *o = w->o;

	if (o->cap < 0 || f->kthread || excluded(pid, f, w->root))
		return;
	if (o->n == o->cap) {
		struct other_entry *e;

		o->cap = o->cap ? o->cap * 2 : 256;
		e = realloc(o->entries, (size_t)o->cap * sizeof *o->entries);
		if (e == NULL) { /* no figure then: proc_others_end says NAN */
			free(o->entries);
			o->entries = NULL;
			o->n = 0;
			o->cap = -1;
			return;
		}
		o->entries = e;
	}
	o->entries[o->n].pid = pid;
	o->entries[o->n].cpu = f->cpu + f->children;
	o->n++;
}

void proc_others_begin(struct others *o, int root)
{
	struct others_walk w = { o, root, 0 };

	memset(o, 0, sizeof *o);
	o->at = clock_monotonic();
	for_each_proc(remember_other, &w);
	if (o->entries != NULL)
		qsort(o->entries, (size_t)o->n, sizeof *o->entries, cmp_int);
}

static void add_other_cpu(int pid, const struct stat_fields *f, void *arg)
{
	struct others_walk *w = arg;
	struct other_entry key, *e;

	if (f->kthread || excluded(pid, f, w->root))
		return;
	key.pid = pid;
	e = bsearch(&key, w->o->entries, (size_t)w->o->n, sizeof *w->o->entries, cmp_int);
	/* A process that started in the window counts whole. One that
	 * ended is lost unless its parent reaped it (children). */
	w->used += e != NULL ? f->cpu + f->children - e->cpu : f->cpu + f->children;
}

double proc_others_end(struct others *o, int root)
{
	struct others_walk w = { o, root, 0 };

	if (o->entries == NULL || for_each_proc(add_other_cpu, &w) < 0) {
		free(o->entries);
		o->entries = NULL;
		return NAN;
	}
	free(o->entries);
	o->entries = NULL;
	return w.used > 0 ? w.used : 0;
}
