/* mr-load's scenarios: one backend and N agents against a Mephisto router.
 *
 * One libevent base runs everything: the lws client connections (wsc.c),
 * the HTTP clients (httpc.c), a 10 ms tick that moves the run from phase
 * to phase and enforces every time limit, and a 1 ms tick that paces
 * heartbeats and rate-limited sends. Packets are written from templates
 * (no JSON library on the send path) and read by looking for the few keys
 * needed (util.c json_*), so that the generator is not the bottleneck.
 *
 * Phases: the backend connects and says alive, then the agents connect
 * (at most --concurrency handshakes at once) and say alive; an agent is
 * attached when the answer to its alive (update_status) arrives. Then the
 * scenario's traffic runs for --warmup plus --duration seconds, figures
 * are taken in the second part, sending stops, what is in flight drains
 * (at most --drain seconds) and everything closes. */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum kind { K_UP, K_DOWN, K_HEARTBEAT, K_CONNECT, K_REGISTER, K_CHURN };

enum phase {
	PH_BACKEND,   /* backend connecting, alive, first return_statuses */
	PH_WAIT_GO,   /* forked agent process: waiting for the parent */
	PH_ATTACH,    /* agents connecting and attaching */
	PH_RUN,       /* traffic */
	PH_DRAIN,     /* no new sends; waiting for what is in flight */
	PH_WAIT,      /* connect: agents done, waiting for the other processes */
	PH_CHURN_CLOSE, /* churn: agents closing */
	PH_SETTLE,    /* churn: pause before the memory sample */
	PH_CLOSE,     /* closing everything */
	PH_DONE
};

static const char *const phase_names[] = {
	"backend", "wait", "attach", "run", "drain", "wait", "churn-close",
	"settle", "close", "done"
};

#define HB_RING 8
#define MAX_BATCH 256 /* frames per agent per WRITEABLE callback */

struct agent {
	struct wsc ws; /* first: a struct wsc * is a struct agent * */
	uint32_t idx;
	uint32_t credits;    /* up: may send this many more (window - in flight);
			      * down: the backend may send it this many more */
	uint32_t allow;      /* rate-limited: sends granted by the pacer */
	uint8_t attached, in_ring, hb_head, hb_count, checked;
	uint32_t hb_due;
	uint64_t next_seq;   /* next seq to send to / from it */
	uint64_t got;        /* distinct seqs received */
	uint64_t max_seen;   /* highest seq received + 1 */
	uint8_t *seen;       /* bitmap of received seqs */
	size_t seen_bytes;
	double hb_sent[HB_RING];
};

/* What one agent process reports to the coordinator (connect and
 * heartbeat scenarios; through a pipe when --procs > 1). */
struct slice_report {
	int type;           /* 1 attached, 2 done */
	long attached, failed;
	double attach_end;  /* monotonic seconds */
	uint64_t hb_sent, hb_answered, hb_late, hb_unexpected;
	double cpu;
	struct hist rtt;
};

struct slice {
	int fd;             /* pipe from the child, -1 local */
	int wfd;            /* pipe to the child */
	pid_t pid;
	size_t have;
	struct slice_report in;  /* being read */
	struct slice_report attached, done;
	int got_attached, got_done;
};

static struct run {
	struct load_opts *o;
	enum kind kind;
	const char *host;
	int port;
	struct event_base *base;
	struct event *tick, *fast, *poll_ev;
	enum phase phase;
	double phase_at, deadline, started;
	char fail_reason[256];

	struct wsc backend;
	int backend_ready;
	uint64_t backend_statuses;

	struct agent *agents;
	long n;              /* agents in this process */
	long id_base;        /* first agent id of this process */
	long id_offset;      /* churn with fresh ids */
	long next_connect, connecting, attached, failed, open;
	double attach_start, attach_end;
	long src_checked, src_wrong;

	/* traffic */
	int rate_mode, stop_sending;
	double tokens, last_fill;
	uint32_t *ring;
	long ring_head, ring_len;
	uint64_t sent_total, got_total, dup_total, reordered_total, unknown_total;
	int measuring;
	double run_start, m_start, m_end;
	uint64_t m_got0, m_got1;
	struct hist lat;

	/* heartbeats */
	double hb_start, hb_end;
	uint64_t hb_done, hb_sent, hb_answered, hb_late, hb_unexpected;
	int hb_running;

	/* register */
	struct httpc_stats http;
	uint64_t registers, register_unparsed;

	/* processes */
	int child_fd, child_rfd;  /* this is a forked agent process */
	struct slice *slices;
	int nslices;
	int slices_attached_seen;
	int measure_go; /* connect/heartbeat: every process attached */
	double go_at;

	/* churn */
	int round;
	double churn_rss[16];
	double churn_attach[16];
	long churn_failed;

	struct proc_sample mem0, mem1, cpu0, cpu1;
	struct others others;
	double others_cpu;
	double self_cpu0, self_cpu1;
	char ts[32];
	double ts_at;
} R;

static char src_names[254][16];

/* ---- small helpers ---- */

static void fail(const char *fmt, ...)
{
	va_list ap;

	if (R.fail_reason[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(R.fail_reason, sizeof R.fail_reason, fmt, ap);
	va_end(ap);
	fprintf(stderr, "mr-load: %s\n", R.fail_reason);
}

static void set_phase(enum phase p)
{
	R.phase = p;
	R.phase_at = clock_monotonic();
}

static char *put_u64(char *p, uint64_t v)
{
	char tmp[24];
	int n = 0;

	do {
		tmp[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	while (n > 0)
		*p++ = tmp[--n];
	return p;
}

static char *put_str(char *p, const char *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

#define PUT_LIT(p, lit) put_str((p), (lit), sizeof(lit) - 1)

/* Epoch seconds with milliseconds, refreshed at most once per ms. */
static const char *timestamp(void)
{
	double t = clock_monotonic();

	if (t - R.ts_at >= 0.001) {
		R.ts_at = t;
		snprintf(R.ts, sizeof R.ts, "%.3f", clock_epoch());
	}
	return R.ts;
}

static const char *pad_text;
static size_t pad_len;

static long agent_id(const struct agent *a)
{
	return R.id_base + R.id_offset + (long)a->idx;
}

/* "agent-<id>" in subject_id: the agent of this process, or NULL. */
static struct agent *agent_by_subject(const char *s, size_t n)
{
	uint64_t id = 0;
	long idx;

	if (n < 7 || memcmp(s, "agent-", 6) != 0)
		return NULL;
	for (size_t i = 6; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return NULL;
		id = id * 10 + (uint64_t)(s[i] - '0');
	}
	idx = (long)id - R.id_base - R.id_offset;
	if (idx < 0 || idx >= R.n)
		return NULL;
	return &R.agents[idx];
}

static int type_is(const char *msg, size_t len, const char *type)
{
	const char *s;
	size_t n;

	return json_get_string(msg, len, "packet_type", &s, &n) == 0 &&
	       n == strlen(type) && memcmp(s, type, n) == 0;
}

/* ---- ring of agents with something to send (round-robin) ---- */

static void ring_push(struct agent *a)
{
	if (a->in_ring)
		return;
	a->in_ring = 1;
	R.ring[(R.ring_head + R.ring_len) % R.n] = a->idx;
	R.ring_len++;
}

static struct agent *ring_pop(void)
{
	struct agent *a;

	if (R.ring_len == 0)
		return NULL;
	a = &R.agents[R.ring[R.ring_head]];
	R.ring_head = (R.ring_head + 1) % R.n;
	R.ring_len--;
	a->in_ring = 0;
	return a;
}

/* ---- exactly-once bookkeeping ---- */

static void note_receipt(struct agent *a, uint64_t seq, uint64_t t_ns)
{
	size_t byte = (size_t)(seq >> 3);
	uint8_t bit = (uint8_t)(1u << (seq & 7));
	uint64_t now = now_mono_ns();

	if (seq >= a->next_seq) {
		R.unknown_total++; /* never sent: corrupt or foreign */
		return;
	}
	if (byte >= a->seen_bytes) {
		size_t cap = a->seen_bytes ? a->seen_bytes : 64;
		while (cap <= byte)
			cap *= 2;
		a->seen = realloc(a->seen, cap);
		if (a->seen == NULL) {
			fprintf(stderr, "mr-load: out of memory\n");
			exit(2);
		}
		memset(a->seen + a->seen_bytes, 0, cap - a->seen_bytes);
		a->seen_bytes = cap;
	}
	if (a->seen[byte] & bit) {
		R.dup_total++;
		return;
	}
	a->seen[byte] |= bit;
	a->got++;
	R.got_total++;
	if (seq + 1 < a->max_seen)
		R.reordered_total++;
	else
		a->max_seen = seq + 1;
	if (R.measuring) {
		hist_add(&R.lat, now > t_ns ? now - t_ns : 0);
		R.m_got1++;
	}
}

/* Parse a live update: subject, data.seq, data.t. */
static struct agent *parse_update(const char *msg, size_t len, uint64_t *seq,
				  uint64_t *t)
{
	const char *s;
	size_t n;
	struct agent *a;

	if (json_get_string(msg, len, "subject_id", &s, &n) < 0 ||
	    (a = agent_by_subject(s, n)) == NULL ||
	    json_get_u64(msg, len, "seq", seq) < 0 || json_get_u64(msg, len, "t", t) < 0)
		return NULL;
	return a;
}

/* ---- packets ---- */

static void send_live_update(struct wsc *ws, const char *type, size_t type_len,
			     struct agent *a)
{
	char buf[512 + 4096], *p = buf;
	const char *ts = timestamp();

	p = PUT_LIT(p, "{\"packet_type\":\"");
	p = put_str(p, type, type_len);
	p = PUT_LIT(p, "\",\"subject_id\":\"agent-");
	p = put_u64(p, (uint64_t)agent_id(a));
	p = PUT_LIT(p, "\",\"data\":{\"seq\":");
	p = put_u64(p, a->next_seq++);
	p = PUT_LIT(p, ",\"t\":");
	p = put_u64(p, now_mono_ns());
	if (pad_len > 0) {
		p = PUT_LIT(p, ",\"pad\":\"");
		p = put_str(p, pad_text, pad_len);
		*p++ = '"';
	}
	p = PUT_LIT(p, "},\"client_timestamp\":");
	p = put_str(p, ts, strlen(ts));
	*p++ = '}';
	wsc_frame(ws, buf, (size_t)(p - buf));
	R.sent_total++;
}

static void send_simple(struct wsc *ws, const char *type, const char *subject,
			const char *data, const char *ts_key)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf,
			 "{\"packet_type\":\"%s\",\"subject_id\":\"%s\",\"data\":%s,"
			 "\"%s\":%s}", type, subject, data, ts_key, timestamp());

	wsc_frame(ws, buf, (size_t)n);
	wsc_want_write(ws);
}

/* ---- agents ---- */

static void connect_more(void);

static void agent_open(struct wsc *ws)
{
	struct agent *a = (struct agent *)ws;
	char subject[32];

	R.open++;
	if (!a->checked && R.src_checked < 4 && R.o->spread) {
		struct sockaddr_in sa;
		socklen_t sl = sizeof sa;
		int fd = lws_get_socket_fd(ws->wsi);

		a->checked = 1;
		R.src_checked++;
		if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0 ||
		    strcmp(inet_ntoa(sa.sin_addr), src_names[a->idx % 254]) != 0)
			R.src_wrong++;
	}
	snprintf(subject, sizeof subject, "agent-%ld", agent_id(a));
	send_simple(ws, "alive", subject, "{}", "client_timestamp");
}

static void agent_attached(struct agent *a)
{
	a->attached = 1;
	R.attached++;
	R.connecting--;
	if (R.attached + R.failed == R.n)
		R.attach_end = clock_monotonic();
	connect_more();
}

static void backend_want(void)
{
	wsc_want_write(&R.backend);
}

static void agent_message(struct wsc *ws, const char *msg, size_t len)
{
	struct agent *a = (struct agent *)ws, *b;
	uint64_t seq, t;

	if (!a->attached) {
		if (type_is(msg, len, "update_status"))
			agent_attached(a);
		return;
	}
	switch (R.kind) {
	case K_DOWN:
		if (!type_is(msg, len, "client_bound_live_update"))
			return;
		/* The subject names the agent; mr-echo delivers round-robin to
		 * any agent socket, so the subject, not the socket, counts. */
		b = parse_update(msg, len, &seq, &t);
		if (b == NULL) {
			R.unknown_total++;
			return;
		}
		note_receipt(b, seq, t);
		b->credits++;
		ring_push(b);
		if (!R.rate_mode && !R.stop_sending)
			backend_want();
		return;
	case K_HEARTBEAT:
	case K_CONNECT:
		if (!type_is(msg, len, "heartbeat"))
			return;
		if (a->hb_count == 0) {
			R.hb_unexpected++;
			return;
		}
		{
			double sent = a->hb_sent[a->hb_head];
			a->hb_head = (uint8_t)((a->hb_head + 1) % HB_RING);
			a->hb_count--;
			R.hb_answered++;
			if (R.measuring)
				hist_add(&R.lat, (uint64_t)((clock_monotonic() - sent) * 1e9));
		}
		return;
	default:
		return;
	}
}

static void agent_writable(struct wsc *ws)
{
	struct agent *a = (struct agent *)ws;

	if (R.kind == K_UP && !R.stop_sending) {
		uint32_t n = a->credits;

		if (R.rate_mode)
			n = n < a->allow ? n : a->allow;
		if (n > MAX_BATCH)
			n = MAX_BATCH;
		for (uint32_t i = 0; i < n; i++)
			send_live_update(ws, "mephisto_bound_live_update", 26, a);
		a->credits -= n;
		if (R.rate_mode)
			a->allow -= n;
		if (!R.rate_mode && a->credits > 0)
			wsc_want_write(ws); /* batch cut */
	}
	while (a->hb_due > 0) {
		char subject[32];

		a->hb_due--;
		snprintf(subject, sizeof subject, "agent-%ld", agent_id(a));
		if (a->hb_count == HB_RING) {
			/* the oldest is still unanswered: count it late */
			a->hb_head = (uint8_t)((a->hb_head + 1) % HB_RING);
			a->hb_count--;
			R.hb_late++;
		}
		a->hb_sent[(a->hb_head + a->hb_count) % HB_RING] = clock_monotonic();
		a->hb_count++;
		R.hb_sent++;
		send_simple(ws, "heartbeat", subject, "{}", "client_timestamp");
	}
}

static void agent_close(struct wsc *ws, int was_open)
{
	struct agent *a = (struct agent *)ws;

	if (was_open)
		R.open--;
	if (!a->attached && (R.phase == PH_ATTACH || R.phase == PH_BACKEND)) {
		R.failed++;
		R.connecting--;
		if (R.attached + R.failed == R.n)
			R.attach_end = clock_monotonic();
		connect_more();
	}
	a->attached = 0;
	a->hb_count = 0;
	a->hb_due = 0;
}

static const struct wsc_ops agent_ops = {
	agent_open, agent_message, agent_writable, agent_close
};

static void connect_more(void)
{
	if (R.phase != PH_ATTACH)
		return;
	while (R.next_connect < R.n && R.connecting < R.o->concurrency) {
		struct agent *a = &R.agents[R.next_connect++];
		const char *src = R.o->spread ? src_names[a->idx % 254] : NULL;

		R.connecting++;
		a->attached = 0;
		a->ws.ops = &agent_ops;
		wsc_connect(&a->ws, R.host, R.port, src, 0);
	}
}

/* ---- the backend ---- */

static void backend_open(struct wsc *ws)
{
	send_simple(ws, "alive", "mephisto", "{}", "client_timestamp");
	send_simple(ws, "request_statuses", "mephisto", "{}", "server_timestamp");
}

static void backend_register(const char *msg, size_t len)
{
	const char *s;
	size_t n;
	char buf[512];
	int w;

	if (json_get_string(msg, len, "subject_id", &s, &n) < 0 || n > 100) {
		R.register_unparsed++;
		return;
	}
	R.registers++;
	w = snprintf(buf, sizeof buf,
		     "{\"packet_type\":\"agent_details\",\"subject_id\":\"%.*s\","
		     "\"data\":{\"request_id\":\"%.*s\",\"agent_id\":\"agent-r%llu\"},"
		     "\"client_timestamp\":%s}",
		     (int)n, s, (int)n, s, (unsigned long long)R.registers, timestamp());
	wsc_frame(&R.backend, buf, (size_t)w);
	backend_want();
}

static void backend_message(struct wsc *ws, const char *msg, size_t len)
{
	uint64_t seq, t;
	struct agent *a;

	(void)ws;
	if (R.kind == K_UP && type_is(msg, len, "mephisto_bound_live_update")) {
		a = parse_update(msg, len, &seq, &t);
		if (a == NULL) {
			R.unknown_total++;
			return;
		}
		note_receipt(a, seq, t);
		a->credits++;
		if (R.stop_sending)
			return;
		if (R.rate_mode) {
			if (a->credits > a->allow)
				ring_push(a);
		} else {
			wsc_want_write(&a->ws);
		}
		return;
	}
	if (R.kind == K_REGISTER && type_is(msg, len, "register_agent")) {
		backend_register(msg, len);
		return;
	}
	if (type_is(msg, len, "return_statuses")) {
		R.backend_statuses++;
		R.backend_ready = 1;
	}
}

/* down: the backend writes round-robin to agents with window left. */
static void backend_writable(struct wsc *ws)
{
	if (R.kind != K_DOWN || R.stop_sending)
		return;
	while (ws->out_len < WSC_BATCH_BYTES && R.ring_len > 0) {
		struct agent *a;

		if (R.rate_mode) {
			if (R.tokens < 1)
				return;
			R.tokens -= 1;
		}
		a = ring_pop();
		if (a->credits == 0)
			continue;
		send_live_update(ws, "client_bound_live_update", 24, a);
		a->credits--;
		if (a->credits > 0)
			ring_push(a);
	}
	if (R.ring_len > 0 && !R.rate_mode)
		wsc_want_write(ws);
}

static void backend_close(struct wsc *ws, int was_open)
{
	(void)ws;
	if (R.phase < PH_CLOSE)
		fail("the backend connection %s", was_open ? "closed" : "failed");
}

static const struct wsc_ops backend_ops = {
	backend_open, backend_message, backend_writable, backend_close
};

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (R.backend.state == WSC_OPEN && R.o->poll)
		send_simple(&R.backend, "request_statuses", "mephisto", "{}",
			    "server_timestamp");
}

/* ---- pacing: heartbeats and rate-limited sends (1 ms) ---- */

static void fast_cb(evutil_socket_t fd, short what, void *arg)
{
	double t = clock_monotonic();

	(void)fd;
	(void)what;
	(void)arg;
	if (R.hb_running && R.n > 0) {
		uint64_t due = (uint64_t)((t - R.hb_start) / R.o->interval * (double)R.n);

		if (due > R.hb_done + (uint64_t)R.n) /* a whole round behind: skip */
			R.hb_done = due - (uint64_t)R.n;
		for (; R.hb_done < due; R.hb_done++) {
			struct agent *a = &R.agents[R.hb_done % (uint64_t)R.n];

			if (a->ws.state != WSC_OPEN)
				continue;
			a->hb_due++;
			wsc_want_write(&a->ws);
		}
	}
	if (R.rate_mode && !R.stop_sending) {
		R.tokens += (t - R.last_fill) * R.o->rate;
		R.last_fill = t;
		if (R.tokens > R.o->rate * 0.005 + 1)
			R.tokens = R.o->rate * 0.005 + 1;
		if (R.kind == K_UP) {
			while (R.tokens >= 1 && R.ring_len > 0) {
				struct agent *a = ring_pop();

				if (a->credits <= a->allow)
					continue;
				a->allow++;
				R.tokens -= 1;
				wsc_want_write(&a->ws);
				if (a->credits > a->allow)
					ring_push(a);
			}
		} else if (R.kind == K_DOWN && R.tokens >= 1 && R.ring_len > 0) {
			backend_want();
		}
	}
}

/* ---- coordination of agent processes (connect, heartbeat) ---- */

static void slice_report_local(int type)
{
	struct slice_report r;

	memset(&r, 0, sizeof r);
	r.type = type;
	r.attached = R.attached;
	r.failed = R.failed;
	r.attach_end = R.attach_end;
	r.hb_sent = R.hb_sent;
	r.hb_answered = R.hb_answered;
	r.hb_late = R.hb_late;
	r.hb_unexpected = R.hb_unexpected;
	r.cpu = proc_self_cpu();
	if (type == 2)
		r.rtt = R.lat;
	if (R.child_fd < 0 && (R.nslices == 0 || R.slices[0].fd >= 0))
		return; /* the parent of agent processes has no agents */
	if (R.child_fd >= 0) {
		const char *p = (const char *)&r;
		size_t left = sizeof r;

		while (left > 0) {
			ssize_t w = write(R.child_fd, p, left);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				exit(1);
			p += w;
			left -= (size_t)w;
		}
		return;
	}
	if (type == 1) {
		R.slices[0].attached = r;
		R.slices[0].got_attached = 1;
	} else {
		R.slices[0].done = r;
		R.slices[0].got_done = 1;
	}
}

/* Non-blocking reads of the children's reports. */
static void slices_read(void)
{
	for (int i = 0; i < R.nslices; i++) {
		struct slice *s = &R.slices[i];

		while (s->fd >= 0) {
			ssize_t n = read(s->fd, (char *)&s->in + s->have, sizeof s->in - s->have);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				if (n == 0 || errno != EAGAIN) {
					close(s->fd);
					s->fd = -1;
					if (!s->got_done)
						fail("agent process %d ended early", i);
				}
				break;
			}
			s->have += (size_t)n;
			if (s->have < sizeof s->in)
				continue;
			s->have = 0;
			if (s->in.type == 1) {
				s->attached = s->in;
				s->got_attached = 1;
			} else {
				s->done = s->in;
				s->got_done = 1;
			}
		}
	}
}

static int slices_all(int done)
{
	for (int i = 0; i < R.nslices; i++)
		if (!(done ? R.slices[i].got_done : R.slices[i].got_attached))
			return 0;
	return 1;
}

/* ---- phase changes ---- */

static void start_attach(void)
{
	R.attach_start = clock_monotonic();
	set_phase(PH_ATTACH);
	if (R.n == 0) {
		R.attach_end = R.attach_start;
		return;
	}
	connect_more();
}

static void start_heartbeats(void)
{
	R.hb_start = clock_monotonic();
	R.hb_done = 0;
	R.hb_running = 1;
}

static void start_traffic(void)
{
	R.run_start = clock_monotonic();
	set_phase(PH_RUN);
	R.last_fill = R.run_start;
	switch (R.kind) {
	case K_UP:
		for (long i = 0; i < R.n; i++) {
			struct agent *a = &R.agents[i];

			a->credits = (uint32_t)R.o->window;
			if (a->ws.state != WSC_OPEN)
				continue;
			if (R.rate_mode)
				ring_push(a);
			else
				wsc_want_write(&a->ws);
		}
		break;
	case K_DOWN:
		for (long i = 0; i < R.n; i++) {
			R.agents[i].credits = (uint32_t)R.o->window;
			if (R.agents[i].ws.state == WSC_OPEN)
				ring_push(&R.agents[i]);
		}
		backend_want();
		break;
	case K_HEARTBEAT:
	case K_CONNECT:
		start_heartbeats();
		break;
	case K_REGISTER:
		if (httpc_start(R.base, R.host, R.port, (int)R.o->clients, R.o->spread,
				&R.http) < 0)
			fail("cannot start the HTTP clients");
		break;
	case K_CHURN:
		break;
	}
}

static void start_measure(void)
{
	R.measuring = 1;
	R.m_start = clock_monotonic();
	R.m_got0 = R.m_got1 = 0;
	hist_reset(&R.lat);
	R.http.measuring = 1;
	R.http.window_done = 0;
	hist_reset(&R.http.lat);
	proc_sample(R.o->pid, &R.cpu0);
	proc_others_begin(&R.others, R.o->pid);
	R.self_cpu0 = proc_self_cpu();
}

static void stop_measure(void)
{
	R.measuring = 0;
	R.http.measuring = 0;
	R.m_end = clock_monotonic();
	proc_sample(R.o->pid, &R.cpu1);
	R.others_cpu = proc_others_end(&R.others, R.o->pid);
	R.self_cpu1 = proc_self_cpu();
	R.stop_sending = 1;
	R.hb_running = 0;
	if (R.kind == K_REGISTER)
		httpc_stop();
	set_phase(PH_DRAIN);
}

static int drained(void)
{
	switch (R.kind) {
	case K_UP:
	case K_DOWN:
		return R.got_total >= R.sent_total;
	case K_HEARTBEAT:
	case K_CONNECT:
		return R.hb_answered + R.hb_late >= R.hb_sent;
	case K_REGISTER:
		return httpc_outstanding() == 0;
	default:
		return 1;
	}
}

static void close_agents(void)
{
	for (long i = 0; i < R.n; i++)
		wsc_close(&R.agents[i].ws);
}

static void start_close(void)
{
	set_phase(PH_CLOSE);
	close_agents();
	wsc_close(&R.backend);
}

static void churn_next_round(void);

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	double t = clock_monotonic();

	(void)fd;
	(void)what;
	(void)arg;
	if (R.nslices > 0 && R.child_fd < 0)
		slices_read();
	if (R.fail_reason[0] != '\0' && R.phase < PH_CLOSE) {
		start_close();
		return;
	}
	if (t > R.deadline && R.phase < PH_CLOSE) {
		fail("time limit reached in phase %s", phase_names[R.phase]);
		start_close();
		return;
	}
	switch (R.phase) {
	case PH_BACKEND:
		if (R.backend.state == WSC_OPEN &&
		    (R.backend_ready || t - R.phase_at > 1.0)) {
			/* A router answers request_statuses; mr-echo does not:
			 * after a second, go on without it. */
			proc_sample(R.o->pid, &R.mem0);
			if (R.nslices > 0 && R.slices[0].fd >= 0) {
				R.go_at = t;
				for (int i = 0; i < R.nslices; i++)
					if (write(R.slices[i].wfd, "g", 1) != 1)
						fail("cannot start agent process %d", i);
			}
			start_attach();
		} else if (t - R.phase_at > 10) {
			fail("the backend did not connect within 10 s");
		}
		break;
	case PH_WAIT_GO:
		break;
	case PH_ATTACH:
		connect_more();
		if (R.attached + R.failed >= R.n) {
			if (R.kind == K_CHURN) {
				R.churn_attach[R.round] = R.attach_end - R.attach_start;
				R.churn_failed += R.failed;
				set_phase(PH_CHURN_CLOSE);
				close_agents();
				break;
			}
			if (R.kind == K_CONNECT || R.kind == K_HEARTBEAT)
				slice_report_local(1);
			start_traffic();
		} else if (t - R.phase_at > R.o->connect_timeout) {
			fail("%ld of %ld agents attached within %.0f s (%ld failed)",
			     R.attached, R.n, R.o->connect_timeout, R.failed);
		}
		break;
	case PH_RUN:
		/* With agent processes the RTT window (after --warmup) starts
		 * when every process has attached all of its agents, in all of
		 * them at once: the parent sends 'm' to each. Otherwise the
		 * first process to attach would time heartbeats against a
		 * router still busy with the others' connections. */
		if ((R.kind == K_CONNECT || R.kind == K_HEARTBEAT) && !R.measuring &&
		    !R.measure_go) {
			if (R.child_fd >= 0) {
				struct pollfd pfd = { R.child_rfd, POLLIN, 0 };
				char c;

				if (poll(&pfd, 1, 0) != 1)
					break;
				if (read(R.child_rfd, &c, 1) != 1 || c != 'm')
					fail("unexpected word from the parent process");
			} else if (R.nslices > 0) {
				if (!slices_all(0))
					break;
				for (int i = 0; i < R.nslices; i++)
					if (R.slices[i].wfd >= 0 && write(R.slices[i].wfd, "m", 1) != 1)
						fail("cannot signal agent process %d", i);
			}
			R.measure_go = 1;
			R.run_start = t;
		}
		if (!R.measuring && t >= R.run_start + R.o->warmup)
			start_measure();
		if (R.measuring && t >= R.m_start + R.o->duration)
			stop_measure();
		break;
	case PH_DRAIN:
		if (drained() || t - R.phase_at > R.o->drain) {
			if (R.kind == K_CONNECT || R.kind == K_HEARTBEAT) {
				slice_report_local(2);
				set_phase(PH_WAIT);
				if (R.child_fd >= 0) {
					/* Block until the parent has sampled the
					 * router with every connection open. */
					char c;
					while (read(R.child_rfd, &c, 1) < 0 && errno == EINTR)
						;
					start_close();
				}
			} else {
				start_close();
			}
		}
		break;
	case PH_WAIT:
		if (slices_all(1)) {
			proc_sample(R.o->pid, &R.mem1);
			for (int i = 0; i < R.nslices; i++)
				if (R.slices[i].wfd >= 0 && write(R.slices[i].wfd, "c", 1) != 1)
					fail("cannot stop agent process %d", i);
			start_close();
		}
		break;
	case PH_CHURN_CLOSE:
		if (R.open == 0 && wsc_live <= 1 /* the backend */) {
			set_phase(PH_SETTLE);
		} else if (t - R.phase_at > 30) {
			fail("agents did not close within 30 s");
		}
		break;
	case PH_SETTLE:
		if (t - R.phase_at >= R.o->drain) {
			struct proc_sample s;

			proc_sample(R.o->pid, &s);
			R.churn_rss[R.round] = s.ok ? (double)s.rss : NAN;
			churn_next_round();
		}
		break;
	case PH_CLOSE:
		if ((wsc_live == 0) || t - R.phase_at > 5) {
			set_phase(PH_DONE);
			event_base_loopbreak(R.base);
		}
		break;
	case PH_DONE:
		break;
	}
}

static void churn_next_round(void)
{
	int r = R.round;

	if (isnan(R.churn_rss[r]))
		printf("  round %d: %ld attached in %.2f s, %ld failed; router RSS n/a\n",
		       r + 1, R.attached, R.churn_attach[r], R.failed);
	else
		printf("  round %d: %ld attached in %.2f s, %ld failed; router RSS %.1f MB\n",
		       r + 1, R.attached, R.churn_attach[r], R.failed,
		       R.churn_rss[r] / 1048576.0);
	fflush(stdout);
	R.round++;
	if (R.round >= R.o->rounds || R.round >= 16) {
		start_close();
		return;
	}
	if (R.o->fresh_ids)
		R.id_offset = R.round * R.n;
	R.attached = R.failed = R.connecting = 0;
	R.next_connect = 0;
	start_attach();
}

/* ---- one run: setup, loop, teardown ---- */

static int run_once(struct load_opts *o, enum kind kind, const char *host, int port)
{
	struct timeval tick_tv = { 0, 10000 }, fast_tv = { 0, 1000 }, poll_tv = { 4, 0 };
	double budget;
	int is_child = R.child_fd >= 0;
	struct slice *slices = R.slices;
	int nslices = R.nslices, child_fd = R.child_fd, child_rfd = R.child_rfd;
	long id_base = R.id_base, n = R.n;

	memset(&R, 0, sizeof R);
	R.o = o;
	R.kind = kind;
	R.host = host;
	R.port = port;
	R.slices = slices;
	R.nslices = nslices;
	R.child_fd = child_fd;
	R.child_rfd = child_rfd;
	R.id_base = id_base;
	R.n = n;
	R.rate_mode = o->rate > 0;
	R.started = clock_monotonic();
	budget = 15 + o->connect_timeout + o->warmup + o->duration + o->drain + 10;
	if (kind == K_CHURN)
		budget = 15 + o->rounds * (o->connect_timeout + 30 + o->drain) + 10;
	if (kind == K_CONNECT || kind == K_HEARTBEAT)
		budget += 30; /* waiting for the other processes */
	R.deadline = R.started + budget;

	R.base = event_base_new();
	if (R.base == NULL || wsc_init(R.base) < 0) {
		fprintf(stderr, "mr-load: cannot create the event loop or lws context\n");
		return 2;
	}
	R.agents = calloc((size_t)(R.n > 0 ? R.n : 1), sizeof *R.agents);
	R.ring = calloc((size_t)(R.n > 0 ? R.n : 1), sizeof *R.ring);
	if (R.agents == NULL || R.ring == NULL) {
		fprintf(stderr, "mr-load: out of memory\n");
		return 2;
	}
	for (long i = 0; i < R.n; i++)
		R.agents[i].idx = (uint32_t)i;
	R.tick = event_new(R.base, -1, EV_PERSIST, tick_cb, NULL);
	R.fast = event_new(R.base, -1, EV_PERSIST, fast_cb, NULL);
	R.poll_ev = event_new(R.base, -1, EV_PERSIST, poll_cb, NULL);
	event_add(R.tick, &tick_tv);
	if (kind == K_HEARTBEAT || kind == K_CONNECT || R.rate_mode)
		event_add(R.fast, &fast_tv);

	if (is_child) {
		/* An agent process: no backend; start when the parent says. */
		char c;

		while (read(R.child_rfd, &c, 1) < 0 && errno == EINTR)
			;
		proc_sample(o->pid, &R.mem0);
		start_attach();
	} else {
		event_add(R.poll_ev, &poll_tv);
		R.backend.ops = &backend_ops;
		set_phase(PH_BACKEND);
		wsc_connect(&R.backend, host, port, NULL, 1);
	}
	event_base_dispatch(R.base);

	/* lws before the base (LWS-NOTES); agents after lws, which may still
	 * call back into them while it closes. */
	wsc_shutdown();
	if (kind == K_REGISTER)
		httpc_free();
	event_free(R.tick);
	event_free(R.fast);
	event_free(R.poll_ev);
	event_base_free(R.base);
	for (long i = 0; i < R.n; i++) {
		wsc_free_buffers(&R.agents[i].ws);
		free(R.agents[i].seen);
	}
	wsc_free_buffers(&R.backend);
	free(R.agents);
	free(R.ring);
	R.agents = NULL;
	return R.fail_reason[0] != '\0' ? 1 : 0;
}

/* ---- reporting ---- */

static char result_line[4096];
static size_t result_len;

static void res(const char *key, const char *fmt, ...)
{
	va_list ap;

	if (result_len + 2 >= sizeof result_line)
		return;
	result_len += (size_t)snprintf(result_line + result_len,
				       sizeof result_line - result_len, " %s=", key);
	va_start(ap, fmt);
	result_len += (size_t)vsnprintf(result_line + result_len,
					sizeof result_line - result_len, fmt, ap);
	va_end(ap);
	if (result_len >= sizeof result_line)
		result_len = sizeof result_line - 1;
}

static void res_ms(const char *key, double ms)
{
	if (isnan(ms))
		res(key, "n/a");
	else
		res(key, "%.3f", ms);
}

static void res_mb(const char *key, const struct proc_sample *s)
{
	if (!s->ok)
		res(key, "n/a");
	else
		res(key, "%.1f", (double)s->rss / 1048576.0);
}

static const char *mb_text(char *buf, size_t size, const struct proc_sample *s)
{
	if (!s->ok)
		snprintf(buf, size, "n/a");
	else
		snprintf(buf, size, "%.1f MB", (double)s->rss / 1048576.0);
	return buf;
}

/* Router CPU over the measured window, % of one core. */
static double router_cpu_pct(void)
{
	if (!R.cpu0.ok || !R.cpu1.ok || R.cpu1.at <= R.cpu0.at)
		return NAN;
	return (R.cpu1.cpu - R.cpu0.cpu) / (R.cpu1.at - R.cpu0.at) * 100.0;
}

static double self_cpu_pct(void)
{
	if (R.m_end <= R.m_start)
		return NAN;
	return (R.self_cpu1 - R.self_cpu0) / (R.m_end - R.m_start) * 100.0;
}

/* Where the cores went during the measured window: the router (with
 * --pid), mr-load, and every other user process on the machine (a busy
 * neighbour shows there). The rest is the kernel's network work in
 * interrupts, and idle time. */
static void print_cpu(void)
{
	double r = router_cpu_pct(), s = self_cpu_pct(), other = NAN;

	if (R.m_end > R.m_start && !isnan(R.others_cpu))
		other = R.others_cpu / (R.m_end - R.m_start) * 100.0;
	if (isnan(r))
		printf("  CPU (%% of one core): router n/a (no --pid)");
	else
		printf("  CPU (%% of one core): router %.0f", r);
	if (isnan(s) || isnan(other))
		printf(", mr-load n/a (nothing measured)\n");
	else
		printf(", mr-load %.0f, other processes %.0f (%ld cores)\n", s, other,
		       sysconf(_SC_NPROCESSORS_ONLN));
	if (isnan(r))
		res("router_cpu_pct", "n/a");
	else
		res("router_cpu_pct", "%.0f", r);
	if (isnan(s))
		res("load_cpu_pct", "n/a");
	else
		res("load_cpu_pct", "%.0f", s);
	if (isnan(other))
		res("other_cpu_pct", "n/a");
	else
		res("other_cpu_pct", "%.0f", other);
}

static void print_latency(const char *what, const struct hist *h)
{
	printf("  %s: p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms (%llu samples)\n",
	       what, hist_quantile_ms(h, 0.5), hist_quantile_ms(h, 0.99),
	       hist_quantile_ms(h, 0.999), (double)h->max_ns / 1e6,
	       (unsigned long long)h->count);
	res_ms("p50_ms", hist_quantile_ms(h, 0.5));
	res_ms("p99_ms", hist_quantile_ms(h, 0.99));
	res_ms("p999_ms", hist_quantile_ms(h, 0.999));
	res_ms("max_ms", h->count ? (double)h->max_ns / 1e6 : NAN);
}

static void print_source_check(void)
{
	if (R.src_checked > 0 && R.src_wrong > 0)
		printf("  WARNING: %ld of %ld checked agents were not bound to their "
		       "source address\n", R.src_wrong, R.src_checked);
}

/* up / down: rate, latency, exactly once. */
static int report_flow(const char *scenario, double *rate_out)
{
	char a[32], b[32], c[32];
	double window = R.m_end - R.m_start;
	double rate = window > 0 ? (double)R.m_got1 / window : 0;
	uint64_t lost = R.sent_total > R.got_total ? R.sent_total - R.got_total : 0;
	int ok = R.fail_reason[0] == '\0' && lost == 0 && R.dup_total == 0 &&
		 R.unknown_total == 0 && R.failed == 0;

	printf("%s: %ld agents x %ld in flight%s, %.1f s measured after %.1f s warm-up\n",
	       scenario, R.n, R.o->window, R.rate_mode ? " (rate-limited)" : "",
	       window, R.o->warmup);
	if (R.rate_mode)
		printf("  offered rate: %s packets/s\n", fmt_count(a, sizeof a, R.o->rate));
	printf("  %s agents attached in %.2f s\n", fmt_count(a, sizeof a, (double)R.attached),
	       R.attach_end - R.attach_start);
	print_source_check();
	printf("  rate: %s packets/s\n", fmt_count(a, sizeof a, rate));
	print_latency("latency (send to receipt)", &R.lat);
	printf("  sent %s, received %s distinct: %s lost, %llu duplicated, "
	       "%llu reordered, %llu unknown -> %s\n",
	       fmt_count(a, sizeof a, (double)R.sent_total),
	       fmt_count(b, sizeof b, (double)R.got_total),
	       fmt_count(c, sizeof c, (double)lost),
	       (unsigned long long)R.dup_total, (unsigned long long)R.reordered_total,
	       (unsigned long long)R.unknown_total,
	       lost == 0 && R.dup_total == 0 ? "exactly once" : "NOT exactly once");
	res("agents", "%ld", R.n);
	res("window", "%ld", R.o->window);
	if (R.rate_mode)
		res("offered", "%.0f", R.o->rate);
	res("rate", "%.0f", rate);
	print_cpu();
	res("sent", "%llu", (unsigned long long)R.sent_total);
	res("received", "%llu", (unsigned long long)R.got_total);
	res("lost", "%llu", (unsigned long long)lost);
	res("dup", "%llu", (unsigned long long)R.dup_total);
	res("reordered", "%llu", (unsigned long long)R.reordered_total);
	res("failed_agents", "%ld", R.failed);
	if (rate_out != NULL)
		*rate_out = rate;
	return ok;
}

static int report_register(void)
{
	char a[32];
	double window = R.m_end - R.m_start;
	double rate = window > 0 ? (double)R.http.window_done / window : 0;
	int ok = R.fail_reason[0] == '\0' && R.http.bad_status == 0 &&
		 R.http.bad_body == 0 && R.http.errors == 0 && R.registers == R.http.sent;

	printf("register: %ld HTTP keep-alive clients POST /request_agent, "
	       "%.1f s measured after %.1f s warm-up\n", R.o->clients, window, R.o->warmup);
	printf("  rate: %s requests/s\n", fmt_count(a, sizeof a, rate));
	print_latency("latency (request to answer)", &R.http.lat);
	printf("  requests %llu, answered %llu (200 with agent_details %llu, other "
	       "status %llu, other body %llu), errors %llu, reconnects %llu\n",
	       (unsigned long long)R.http.sent, (unsigned long long)R.http.done,
	       (unsigned long long)R.http.ok, (unsigned long long)R.http.bad_status,
	       (unsigned long long)R.http.bad_body, (unsigned long long)R.http.errors,
	       (unsigned long long)R.http.reconnects);
	printf("  register_agent packets at the backend: %llu (%s)\n",
	       (unsigned long long)R.registers,
	       R.registers == R.http.sent ? "one per request" : "NOT one per request");
	res("clients", "%ld", R.o->clients);
	res("rate", "%.0f", rate);
	print_cpu();
	res("requests", "%llu", (unsigned long long)R.http.sent);
	res("ok_answers", "%llu", (unsigned long long)R.http.ok);
	res("bad", "%llu", (unsigned long long)(R.http.bad_status + R.http.bad_body));
	res("errors", "%llu", (unsigned long long)R.http.errors);
	res("registers", "%llu", (unsigned long long)R.registers);
	return ok;
}

/* connect / heartbeat: merge the slices' reports. */
static int report_heartbeats(const char *scenario)
{
	char a[32], b[32], m0[32], m1[32];
	long attached = 0, failed = 0, total = 0;
	double attach_end = 0, start = R.nslices > 0 && R.go_at > 0 ? R.go_at : R.attach_start;
	uint64_t sent = 0, answered = 0, late = 0, unexpected = 0;
	struct hist rtt;
	int ok;

	hist_reset(&rtt);
	for (int i = 0; i < R.nslices; i++) {
		struct slice_report *d = &R.slices[i].done;
		struct slice_report *t = &R.slices[i].attached;

		attached += t->attached;
		failed += t->failed;
		if (t->attach_end > attach_end)
			attach_end = t->attach_end;
		sent += d->hb_sent;
		answered += d->hb_answered;
		late += d->hb_late;
		unexpected += d->hb_unexpected;
		hist_merge(&rtt, &d->rtt);
	}
	total = R.o->agents;
	ok = R.fail_reason[0] == '\0' && attached == total && answered == sent &&
	     late == 0 && sent > 0;
	printf("%s: %ld agents, heartbeat every %.3g s, %.1f s measured%s\n", scenario,
	       total, R.o->interval, R.o->duration,
	       R.nslices > 1 ? " (agents in several processes)" : "");
	printf("  attached %s of %s in %.2f s (%s agents/s), %ld failed\n",
	       fmt_count(a, sizeof a, (double)attached), fmt_count(b, sizeof b, (double)total),
	       attach_end - start,
	       fmt_count(m0, sizeof m0, attach_end > start ? attached / (attach_end - start) : 0),
	       failed);
	print_source_check();
	printf("  router memory: %s before, %s with every agent attached",
	       mb_text(m0, sizeof m0, &R.mem0), mb_text(m1, sizeof m1, &R.mem1));
	if (R.mem0.ok && R.mem1.ok && attached > 0)
		printf(" (%s bytes per connection, %d processes)\n",
		       fmt_count(a, sizeof a, ((double)R.mem1.rss - (double)R.mem0.rss) / attached),
		       R.mem1.nprocs);
	else
		printf("\n");
	printf("  heartbeats: %llu sent, %llu answered, %llu unanswered, %llu unexpected -> %s\n",
	       (unsigned long long)sent, (unsigned long long)answered,
	       (unsigned long long)(sent - answered), (unsigned long long)unexpected,
	       answered == sent && sent > 0 ? "all answered" : "NOT all answered");
	res("agents", "%ld", total);
	res("interval", "%g", R.o->interval);
	res("attached", "%ld", attached);
	res("attach_s", "%.3f", attach_end - start);
	res_mb("rss_before_mb", &R.mem0);
	res_mb("rss_after_mb", &R.mem1);
	if (R.mem0.ok && R.mem1.ok && attached > 0)
		res("bytes_per_conn", "%.0f",
		    ((double)R.mem1.rss - (double)R.mem0.rss) / (double)attached);
	else
		res("bytes_per_conn", "n/a");
	print_latency("heartbeat RTT", &rtt);
	res("hb_sent", "%llu", (unsigned long long)sent);
	res("hb_answered", "%llu", (unsigned long long)answered);
	res("hb_rate", "%.0f", R.m_end > R.m_start ? (double)rtt.count / (R.m_end - R.m_start) : 0);
	if (R.nslices <= 1) {
		print_cpu();
	} else {
		/* mr-load's agent processes are other processes here */
		double r = router_cpu_pct();

		if (isnan(r)) {
			printf("  router CPU: n/a (no --pid)\n");
			res("router_cpu_pct", "n/a");
		} else {
			printf("  router CPU: %.0f%% of one core\n", r);
			res("router_cpu_pct", "%.0f", r);
		}
	}
	return ok;
}

static int report_churn(void)
{
	int ok = R.fail_reason[0] == '\0' && R.churn_failed == 0 && R.round == R.o->rounds;
	double first = R.churn_rss[0], last = R.churn_rss[R.round > 0 ? R.round - 1 : 0];

	res("agents", "%ld", R.n);
	res("rounds", "%d", R.round);
	for (int i = 0; i < R.round; i++) {
		char key[32];
		snprintf(key, sizeof key, "rss_round%d_mb", i + 1);
		if (isnan(R.churn_rss[i]))
			res(key, "n/a");
		else
			res(key, "%.1f", R.churn_rss[i] / 1048576.0);
		snprintf(key, sizeof key, "attach%d_s", i + 1);
		res(key, "%.3f", R.churn_attach[i]);
	}
	res_mb("rss_before_mb", &R.mem0);
	if (!isnan(first) && !isnan(last) && first > 0) {
		printf("  router RSS after the last round is %.1f%% of round 1\n",
		       last / first * 100);
		res("last_vs_first_pct", "%.1f", last / first * 100);
	} else {
		res("last_vs_first_pct", "n/a");
	}
	res("failed", "%ld", R.churn_failed);
	return ok;
}

static void result_begin(const char *scenario)
{
	result_len = (size_t)snprintf(result_line, sizeof result_line,
				      "RESULT scenario=%s", scenario);
}

static void result_end(int ok)
{
	res("ok", "%d", ok);
	if (R.fail_reason[0] != '\0')
		printf("  FAILED: %s\n", R.fail_reason);
	printf("%s\n", result_line);
	fflush(stdout);
}

/* ---- forking agent processes (connect, heartbeat with --procs) ---- */

static int fork_slices(struct load_opts *o)
{
	long per = (o->agents + o->procs - 1) / o->procs;

	R.slices = calloc((size_t)o->procs, sizeof *R.slices);
	R.nslices = (int)o->procs;
	for (int i = 0; i < R.nslices; i++) {
		int up[2], down[2];
		long lo = i * per, hi = lo + per > o->agents ? o->agents : lo + per;
		pid_t pid;

		if (pipe(up) < 0 || pipe(down) < 0)
			return -1;
		fflush(stdout);
		pid = fork();
		if (pid < 0)
			return -1;
		if (pid == 0) {
			close(up[0]);
			close(down[1]);
			for (int j = 0; j < i; j++) {
				close(R.slices[j].fd);
				close(R.slices[j].wfd);
			}
			free(R.slices);
			R.slices = NULL;
			R.nslices = 0;
			R.child_fd = up[1];
			R.child_rfd = down[0];
			R.id_base = lo;
			R.n = hi > lo ? hi - lo : 0;
			return 1;
		}
		close(up[1]);
		close(down[0]);
		evutil_make_socket_nonblocking(up[0]);
		R.slices[i].fd = up[0];
		R.slices[i].wfd = down[1];
		R.slices[i].pid = pid;
	}
	R.n = 0; /* the parent is the backend only */
	return 0;
}

static void reap_slices(void)
{
	double until = clock_monotonic() + 10;

	for (int i = 0; i < R.nslices; i++) {
		struct slice *s = &R.slices[i];
		int status;

		if (s->pid <= 0)
			continue;
		if (s->wfd >= 0)
			close(s->wfd);
		while (waitpid(s->pid, &status, WNOHANG) == 0) {
			if (clock_monotonic() > until) {
				kill(s->pid, SIGKILL);
				waitpid(s->pid, &status, 0);
				break;
			}
			usleep(10000);
		}
		if (s->fd >= 0)
			close(s->fd);
	}
}

/* ---- scenarios ---- */

static int scenario_flow(struct load_opts *o, enum kind kind, const char *name,
			 const char *host, int port, double *rate, double *p50)
{
	int rc, ok;

	R.n = o->agents;
	R.nslices = 0;
	R.child_fd = -1;
	rc = run_once(o, kind, host, port);
	if (rc == 2)
		return 2;
	result_begin(name);
	ok = report_flow(name, rate);
	if (p50 != NULL)
		*p50 = hist_quantile_ms(&R.lat, 0.5);
	result_end(ok);
	return ok ? 0 : 1;
}

static int scenario_heartbeats(struct load_opts *o, enum kind kind)
{
	const char *name = kind == K_CONNECT ? "connect" : "heartbeat";
	struct slice *slices;
	int nslices, rc, ok, child;

	memset(&R, 0, sizeof R);
	R.child_fd = R.child_rfd = -1;
	R.n = o->agents;
	if (o->procs > 1) {
		child = fork_slices(o);
		if (child < 0) {
			fprintf(stderr, "mr-load: cannot fork agent processes\n");
			return 2;
		}
		if (child == 1) {
			rc = run_once(o, kind, o->host, o->port);
			_exit(rc);
		}
	} else {
		static struct slice local;

		memset(&local, 0, sizeof local);
		local.fd = local.wfd = -1;
		R.slices = &local;
		R.nslices = 1;
	}
	slices = R.slices;
	nslices = R.nslices;
	rc = run_once(o, kind, o->host, o->port);
	R.slices = slices;
	R.nslices = nslices;
	if (o->procs > 1)
		reap_slices();
	if (rc == 2)
		return 2;
	result_begin(name);
	ok = report_heartbeats(name);
	result_end(ok);
	if (o->procs > 1)
		free(R.slices);
	return ok ? 0 : 1;
}

static int scenario_register(struct load_opts *o)
{
	int rc, ok;

	memset(&R, 0, sizeof R);
	R.child_fd = R.child_rfd = -1;
	R.n = 0;
	rc = run_once(o, K_REGISTER, o->host, o->port);
	if (rc == 2)
		return 2;
	result_begin("register");
	ok = report_register();
	result_end(ok);
	return ok ? 0 : 1;
}

static int scenario_churn(struct load_opts *o)
{
	int rc, ok;
	char m0[32];

	memset(&R, 0, sizeof R);
	R.child_fd = R.child_rfd = -1;
	R.n = o->agents;
	if (o->rounds > 16)
		o->rounds = 16;
	printf("churn: %ld agents connect, attach and disconnect, %ld rounds%s\n",
	       o->agents, o->rounds, o->fresh_ids ? " (new agent ids every round)" :
	       " (the same agent ids every round)");
	fflush(stdout);
	rc = run_once(o, K_CHURN, o->host, o->port);
	if (rc == 2)
		return 2;
	printf("  router memory before the first round: %s\n", mb_text(m0, sizeof m0, &R.mem0));
	result_begin("churn");
	ok = report_churn();
	result_end(ok);
	return ok ? 0 : 1;
}

static int scenario_echo_limit(struct load_opts *o)
{
	double up = 0, down = 0, rup = 0, rdown = 0, p50 = NAN, rp50 = NAN;
	int rc = 0, r;
	char line[1024];

	printf("echo-limit: the up and down patterns against %s (an mr-echo)\n", o->url);
	r = scenario_flow(o, K_UP, "echo-up", o->host, o->port, &up, &p50);
	if (r == 2)
		return 2;
	rc |= r;
	r = scenario_flow(o, K_DOWN, "echo-down", o->host, o->port, &down, NULL);
	if (r == 2)
		return 2;
	rc |= r;
	snprintf(line, sizeof line, "RESULT scenario=echo-limit up_rate=%.0f down_rate=%.0f",
		 up, down);
	if (o->router_url != NULL) {
		printf("echo-limit: the same against the router %s\n", o->router_url);
		r = scenario_flow(o, K_UP, "up", o->router_host, o->router_port, &rup, &rp50);
		if (r == 2)
			return 2;
		rc |= r;
		r = scenario_flow(o, K_DOWN, "down", o->router_host, o->router_port, &rdown,
				  NULL);
		if (r == 2)
			return 2;
		rc |= r;
		printf("echo-limit: router up %.0f/s = %.2f of the echo limit, down %.0f/s = "
		       "%.2f of the echo limit\n", rup, up > 0 ? rup / up : 0, rdown,
		       down > 0 ? rdown / down : 0);
		snprintf(line + strlen(line), sizeof line - strlen(line),
			 " router_up_rate=%.0f router_down_rate=%.0f up_fraction=%.3f "
			 "down_fraction=%.3f", rup, rdown, up > 0 ? rup / up : 0,
			 down > 0 ? rdown / down : 0);
	}
	printf("%s ok=%d\n", line, rc == 0);
	(void)p50;
	(void)rp50;
	return rc;
}

int load_main(struct load_opts *o)
{
	static char pad[4096];
	const char *s = o->scenario;

	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < 254; i++)
		snprintf(src_names[i], sizeof src_names[i], "127.0.0.%d", i + 1);
	if (o->pad > 0) {
		if (o->pad > (long)sizeof pad)
			o->pad = sizeof pad;
		memset(pad, 'x', (size_t)o->pad);
		pad_text = pad;
		pad_len = (size_t)o->pad;
	}
	raise_fd_limit();
	if (strcmp(s, "up") == 0)
		return scenario_flow(o, K_UP, "up", o->host, o->port, NULL, NULL);
	if (strcmp(s, "down") == 0)
		return scenario_flow(o, K_DOWN, "down", o->host, o->port, NULL, NULL);
	if (strcmp(s, "heartbeat") == 0)
		return scenario_heartbeats(o, K_HEARTBEAT);
	if (strcmp(s, "connect") == 0)
		return scenario_heartbeats(o, K_CONNECT);
	if (strcmp(s, "register") == 0)
		return scenario_register(o);
	if (strcmp(s, "churn") == 0)
		return scenario_churn(o);
	if (strcmp(s, "echo-limit") == 0)
		return scenario_echo_limit(o);
	fprintf(stderr, "mr-load: unknown scenario '%s' (see --help)\n", s);
	return 2;
}
