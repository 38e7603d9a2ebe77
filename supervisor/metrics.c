#include "metrics.h"

#include "../core/buf.h"

#include <stdio.h>
#include <string.h>

static void head(struct buf *o, const char *name, const char *type, const char *help)
{
	buf_printf(o, "# HELP mephisto_router_%s %s\n# TYPE mephisto_router_%s %s\n", name,
		   help, name, type);
}

static void one(struct buf *o, const char *name, const char *type, const char *help,
		double value)
{
	head(o, name, type, help);
	buf_printf(o, "mephisto_router_%s %.17g\n", name, value);
}

/* A status is a label value: only the characters a status may hold. */
static void status_cb(void *arg, const char *status, size_t n)
{
	struct buf *o = arg;
	char clean[PACKET_MAX_STATUS_BYTES + 1];
	size_t i;

	for (i = 0; status[i] && i < sizeof clean - 1; i++)
		clean[i] = (status[i] == '"' || status[i] == '\\' || status[i] < 0x20)
				   ? '_' : status[i];
	clean[i] = '\0';
	buf_printf(o, "mephisto_router_agents{status=\"%s\"} %zu\n", clean, n);
}

static void add_counts(uint64_t to[IPC_LATENCY_BUCKETS + 1], double *to_sum,
		       const uint64_t from[IPC_LATENCY_BUCKETS + 1], double from_sum)
{
	for (int b = 0; b <= IPC_LATENCY_BUCKETS; b++)
		to[b] += from[b];
	*to_sum += from_sum;
}

/* The series of one histogram (after its head), from a count per bucket of
 * IPC_LATENCY_BOUNDS and one past the last; label may be NULL. */
static void histogram(struct buf *o, const char *name, const char *label,
		      const char *value, const uint64_t counts[IPC_LATENCY_BUCKETS + 1],
		      double sum)
{
	static const double bounds[IPC_LATENCY_BUCKETS] = IPC_LATENCY_BOUNDS;
	char labels[128] = "";
	uint64_t cumulative = 0;

	if (label != NULL)
		snprintf(labels, sizeof labels, "%s=\"%s\",", label, value);
	for (int b = 0; b <= IPC_LATENCY_BUCKETS; b++) {
		cumulative += counts[b];
		if (b < IPC_LATENCY_BUCKETS)
			buf_printf(o, "mephisto_router_%s_bucket{%sle=\"%g\"} %llu\n", name,
				   labels, bounds[b], (unsigned long long)cumulative);
		else
			buf_printf(o, "mephisto_router_%s_bucket{%sle=\"+Inf\"} %llu\n", name,
				   labels, (unsigned long long)cumulative);
	}
	if (label != NULL)
		labels[strlen(labels) - 1] = '\0'; /* no trailing comma */
	buf_printf(o, "mephisto_router_%s_sum%s%s%s %.9g\n", name, label ? "{" : "",
		   labels, label ? "}" : "", sum);
	buf_printf(o, "mephisto_router_%s_count%s%s%s %llu\n", name, label ? "{" : "",
		   labels, label ? "}" : "", (unsigned long long)cumulative);
}

/* One line per worker of a worker_stats field. */
#define PER_WORKER(o, in, name, type, help, field)                              \
	do {                                                                    \
		head(o, name, type, help);                                      \
		for (size_t i_ = 0; i_ < (in)->nworkers; i_++)                  \
			if ((in)->workers[i_].stats != NULL)                    \
				buf_printf(o, "mephisto_router_" name           \
					   "{worker=\"%d\"} %llu\n",            \
					   (in)->workers[i_].slot,              \
					   (unsigned long long)                 \
					   (in)->workers[i_].stats->field);     \
	} while (0)

char *metrics_render(const struct metrics_input *in, size_t *len)
{
	struct buf o = BUF_INIT;
	const struct route_stats *rs = route_get_stats(in->route);
	const struct store_stats *ss = store_get_stats(in->store);
	size_t packets, bytes, running = 0;
	struct route_queues aq;
	double oldest;

	buf_reserve(&o, 8192);
	head(&o, "build_info", "gauge", "The router's version and commit (always 1).");
	buf_printf(&o, "mephisto_router_build_info{version=\"%s\",commit=\"%s\"} 1\n",
		   MR_VERSION, MR_COMMIT);
	one(&o, "start_time_seconds", "gauge", "When the router started (Unix seconds).",
	    in->started);
	one(&o, "workers_configured", "gauge", "Worker processes the config asks for.",
	    (double)in->workers_configured);
	for (size_t i = 0; i < in->nworkers; i++)
		running += in->workers[i].running;
	one(&o, "workers", "gauge", "Worker processes running.", (double)running);
	head(&o, "worker_restarts_total", "counter", "Workers restarted, by cause.");
	buf_printf(&o, "mephisto_router_worker_restarts_total{cause=\"crash\"} %llu\n",
		   (unsigned long long)in->restarts_crash);
	buf_printf(&o, "mephisto_router_worker_restarts_total{cause=\"stalled\"} %llu\n",
		   (unsigned long long)in->restarts_stalled);
	buf_printf(&o, "mephisto_router_worker_restarts_total{cause=\"broken_ipc\"} %llu\n",
		   (unsigned long long)in->restarts_broken_ipc);
	one(&o, "backend_attached", "gauge", "1 when the Mephisto backend's channel is attached.",
	    route_backend_attached(in->route));
	head(&o, "agents", "gauge", "Agents the router knows, by status.");
	route_count_statuses(in->route, status_cb, &o);
	one(&o, "agents_attached", "gauge", "Agents with a WebSocket.",
	    (double)route_attached_agents(in->route));
	route_backend_queue(in->route, &packets, &bytes, &oldest);
	one(&o, "backend_queue_packets", "gauge",
	    "Packets for the backend not yet written to it.", (double)packets);
	one(&o, "backend_queue_bytes", "gauge", "Their bytes.", (double)bytes);
	one(&o, "backend_queue_oldest_age_seconds", "gauge",
	    "Age of the oldest packet for the backend (0: none).",
	    oldest > 0 ? in->now - oldest : 0);
	route_agent_queues(in->route, &aq);
	one(&o, "agent_queue_packets", "gauge",
	    "Packets for agents not yet written to them.", (double)aq.packets);
	one(&o, "agent_queue_bytes", "gauge", "Their bytes.", (double)aq.bytes);
	one(&o, "agent_queue_oldest_age_seconds", "gauge",
	    "Age of the oldest packet for any agent (0: none).",
	    aq.oldest > 0 ? in->now - aq.oldest : 0);
	one(&o, "agent_queues", "gauge", "Agents with packets waiting for them.",
	    (double)aq.destinations);
	one(&o, "agent_queue_deepest_packets", "gauge",
	    "Packets waiting for the agent with the most.", (double)aq.deepest);
	one(&o, "waiting_requests", "gauge",
	    "HTTP requests waiting for the backend's agent_details.",
	    (double)route_waiting_requests(in->route));
	head(&o, "packets_received_total", "counter",
	     "WebSocket packets that reached the supervisor, by type and by who sent them.");
	for (int from = 0; from < 2; from++)
		for (int t = 0; t < PKT_TYPE_COUNT; t++)
			if (rs->received[from][t] > 0)
				buf_printf(&o, "mephisto_router_packets_received_total{type=\"%s\","
					   "from=\"%s\"} %llu\n",
					   packet_type_name((enum packet_type)t),
					   from ? "backend" : "agent",
					   (unsigned long long)rs->received[from][t]);
	one(&o, "packets_routed_total", "counter", "Packets sent towards a connection.",
	    (double)rs->packets_routed);
	one(&o, "packets_queued_total", "counter",
	    "Packets that had to wait for their destination.", (double)rs->packets_queued);
	one(&o, "packets_dropped_total", "counter",
	    "Packets dropped: queue bounds, unknown destinations.", (double)rs->packets_dropped);
	one(&o, "packets_refused_total", "counter",
	    "Packets refused: wrong sender, unknown type, no subject.", (double)rs->packets_refused);
	one(&o, "requests_timed_out_total", "counter",
	    "HTTP requests answered 408: no agent_details in time.",
	    (double)rs->requests_timed_out);
	one(&o, "agents_pruned_total", "counter", "Agents forgotten after agent_retention.",
	    (double)rs->agents_pruned);
	one(&o, "uploads", "gauge", "Uploads recorded (download_file serves these).",
	    (double)in->uploads);
	one(&o, "db_commits_total", "counter", "State database transactions committed.",
	    (double)ss->commits);
	one(&o, "db_commit_failures_total", "counter",
	    "State database transactions that failed (retried).", (double)ss->failures);
	one(&o, "db_commit_seconds_total", "counter", "Time spent in transactions.",
	    ss->commit_seconds);
	one(&o, "db_last_commit_seconds", "gauge", "The last transaction's time.",
	    ss->last_commit_seconds);
	one(&o, "db_given_up", "gauge",
	    "1 when the state database was given up (SIGBUS); restart to use it again.",
	    store_failed(in->store));
	PER_WORKER(&o, in, "connections", "gauge", "Open TCP connections, per worker.",
		   connections);
	PER_WORKER(&o, in, "websockets", "gauge", "Open WebSockets, per worker.", websockets);
	PER_WORKER(&o, in, "connections_accepted_total", "counter",
		   "Connections accepted, per worker.", accepted);
	PER_WORKER(&o, in, "packets_in_total", "counter",
		   "Valid packets received on WebSockets, per worker.", packets_in);
	PER_WORKER(&o, in, "packets_out_total", "counter",
		   "Packets written on WebSockets, per worker.", packets_out);
	PER_WORKER(&o, in, "http_requests_total", "counter",
		   "HTTP requests answered, per worker.", http_requests);
	PER_WORKER(&o, in, "http_errors_total", "counter",
		   "HTTP requests answered 4xx or 5xx, per worker.", http_errors);
	PER_WORKER(&o, in, "invalid_packets_total", "counter",
		   "WebSocket messages dropped as invalid, per worker.", invalid_packets);
	PER_WORKER(&o, in, "backpressure_pauses_total", "counter",
		   "Times a worker stopped reading its clients (IPC backlog).",
		   backpressure_pauses);
	/* request times and heartbeat answers, all workers together */
	{
		static const char *const names[IPC_ENDPOINTS] = IPC_ENDPOINT_NAMES;
		uint64_t counts[IPC_LATENCY_BUCKETS + 1];
		double sum;

		head(&o, "http_request_duration_seconds", "histogram",
		     "Time from a request's head to its answer, by endpoint.");
		for (int e = 0; e < IPC_ENDPOINTS; e++) {
			memset(counts, 0, sizeof counts);
			sum = 0;
			for (size_t i = 0; i < in->nworkers; i++)
				if (in->workers[i].stats != NULL)
					add_counts(counts, &sum, in->workers[i].stats->latency[e],
						   in->workers[i].stats->latency_sum[e]);
			histogram(&o, "http_request_duration_seconds", "endpoint", names[e],
				  counts, sum);
		}
		head(&o, "heartbeat_answer_seconds", "histogram",
		     "Time from an agent's heartbeat reaching a worker to its answer's write "
		     "(the router's part of the heartbeat round trip).");
		memset(counts, 0, sizeof counts);
		sum = 0;
		for (size_t i = 0; i < in->nworkers; i++)
			if (in->workers[i].stats != NULL)
				add_counts(counts, &sum, in->workers[i].stats->heartbeat,
					   in->workers[i].stats->heartbeat_sum);
		histogram(&o, "heartbeat_answer_seconds", NULL, NULL, counts, sum);
	}
	head(&o, "refused_total", "counter", "Refusals and drops by fair limit, per worker.");
	for (size_t i = 0; i < in->nworkers; i++) {
		const struct worker_stats *w = in->workers[i].stats;
		static const char *const reasons[] = {
			"max_connections", "max_connections_per_address", "backend_allow",
			"body_memory_bytes", "max_agents", "body_timeout",
		};

		if (w == NULL)
			continue;
		const uint64_t values[] = {
			w->refused_connections, w->refused_by_address, w->backend_refused,
			w->bodies_refused, w->agents_refused, w->body_timeouts,
		};
		for (size_t k = 0; k < sizeof values / sizeof values[0]; k++)
			buf_printf(&o, "mephisto_router_refused_total{worker=\"%d\","
				   "reason=\"%s\"} %llu\n", in->workers[i].slot, reasons[k],
				   (unsigned long long)values[k]);
	}
	return buf_take(&o, len);
}
