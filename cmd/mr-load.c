/* mr-load: command line of the load generator (scenarios in bench/). */
#include "../bench/bench.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mr-load SCENARIO --url ws://HOST:PORT [options]\n"
		"\n"
		"Plays one Mephisto backend and N agents (browsers) against any Mephisto\n"
		"router and prints its figures: human-readable lines, then one line\n"
		"'RESULT scenario=... key=value ...'. Exit code 0 when every check passed,\n"
		"1 when one failed (loss, duplicates, unanswered heartbeats, failed\n"
		"connections, time limit), 2 on a usage or setup error.\n"
		"\n"
		"Scenarios:\n"
		"  up          agents send mephisto_bound_live_update, --window in flight\n"
		"              each, to the backend: packets/s, latency, exactly once\n"
		"  down        the backend sends client_bound_live_update round-robin to\n"
		"              the agents, --window in flight per agent\n"
		"  heartbeat   agents heartbeat every --interval: RTT, router CPU\n"
		"  connect     agents attach (alive), then heartbeat every --interval for\n"
		"              --duration: time to attach all, router memory, answers\n"
		"  register    --clients HTTP keep-alive clients POST /request_agent, the\n"
		"              backend answers each register_agent with agent_details\n"
		"  churn       --agents attach and disconnect, --rounds times: router\n"
		"              memory after each round\n"
		"  echo-limit  up and down against --url, an mr-echo (this machine's limit\n"
		"              for the pattern); with --router-url also against a router,\n"
		"              with the router's figures as fractions of the limit\n"
		"\n"
		"Options (defaults depend on the scenario):\n"
		"  --url URL           the router: ws://HOST:PORT (or HOST:PORT)\n"
		"  --agents N          agents (up/down 100, heartbeat 1000,\n"
		"                      connect/churn 10000)\n"
		"  --window W          packets in flight per agent (50)\n"
		"  --rate R            up/down: offer R packets/s in total (0: as fast as\n"
		"                      the window allows)\n"
		"  --duration S        seconds measured (5; connect: 2 x --interval)\n"
		"  --warmup S          seconds of traffic before measuring (1; connect 0);\n"
		"                      with --procs, counted from when every process attached\n"
		"  --interval T        heartbeat interval, seconds (heartbeat 0.1,\n"
		"                      connect 6)\n"
		"  --clients C         register: HTTP clients (50)\n"
		"  --rounds R          churn: rounds (3, at most 16)\n"
		"  --pid PID           the router's main process: memory (RSS) and CPU of\n"
		"                      it and its children, from /proc (else n/a)\n"
		"  --procs P           connect/heartbeat: spread the agents over P forked\n"
		"                      processes (for more agents than one process may\n"
		"                      open files)\n"
		"  --concurrency K     connection handshakes in progress at once (200)\n"
		"  --connect-timeout S seconds for all agents to attach (30, or 1 per\n"
		"                      200 agents if more)\n"
		"  --drain S           seconds to wait for what is in flight after the\n"
		"                      measurement; churn: pause before each memory\n"
		"                      sample (5; churn 2)\n"
		"  --pad BYTES         up/down: extra bytes in each packet's data (0)\n"
		"  --router-url URL    echo-limit: the router to compare with\n"
		"  --fresh-ids         churn: new agent ids every round (default: the same)\n"
		"  --no-poll           the backend does not send request_statuses every 4 s\n"
		"  --no-spread         do not bind agents to source addresses 127.0.0.1-254\n"
		"  --help              this text\n");
}

/* ws://host:port[/path], http://host:port, or host:port */
static int parse_url(const char *url, char *host, size_t hostsize, int *port)
{
	const char *p = url, *colon, *end;
	long v;
	char *e;

	if (strncmp(p, "ws://", 5) == 0)
		p += 5;
	else if (strncmp(p, "http://", 7) == 0)
		p += 7;
	else if (strstr(p, "://") != NULL)
		return -1; /* wss, https: not supported */
	end = strchr(p, '/');
	if (end == NULL)
		end = p + strlen(p);
	colon = memchr(p, ':', (size_t)(end - p));
	if (colon == NULL || colon == p || (size_t)(colon - p) >= hostsize)
		return -1;
	memcpy(host, p, (size_t)(colon - p));
	host[colon - p] = '\0';
	v = strtol(colon + 1, &e, 10);
	if (e != end || v < 1 || v > 65535)
		return -1;
	*port = (int)v;
	return 0;
}

static int number(const char *name, const char *arg, double min, double *out)
{
	char *e;
	double v = strtod(arg, &e);

	if (*arg == '\0' || *e != '\0' || !(v >= min)) {
		fprintf(stderr, "mr-load: %s: bad value '%s'\n", name, arg);
		return -1;
	}
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "url", required_argument, NULL, 'u' },
		{ "agents", required_argument, NULL, 'n' },
		{ "window", required_argument, NULL, 'w' },
		{ "rate", required_argument, NULL, 'r' },
		{ "duration", required_argument, NULL, 'd' },
		{ "warmup", required_argument, NULL, 'W' },
		{ "interval", required_argument, NULL, 'i' },
		{ "clients", required_argument, NULL, 'c' },
		{ "rounds", required_argument, NULL, 'R' },
		{ "pid", required_argument, NULL, 'p' },
		{ "procs", required_argument, NULL, 'P' },
		{ "concurrency", required_argument, NULL, 'k' },
		{ "connect-timeout", required_argument, NULL, 'T' },
		{ "drain", required_argument, NULL, 'D' },
		{ "pad", required_argument, NULL, 'b' },
		{ "router-url", required_argument, NULL, 'U' },
		{ "fresh-ids", no_argument, NULL, 'f' },
		{ "no-poll", no_argument, NULL, 'N' },
		{ "no-spread", no_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct load_opts o;
	double agents = -1, window = 50, rate = 0, duration = -1, warmup = -1, interval = -1;
	double clients = 50, rounds = 3, pid = 0, procs = 1, conc = 200, ctimeout = -1;
	double drain = -1, pad = 0, v;
	int opt, is_connect, is_churn;

	memset(&o, 0, sizeof o);
	o.poll = 1;
	o.spread = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		const char *name = opt == '?' ? "" : argv[optind - 1];

		switch (opt) {
		case 'u': o.url = optarg; continue;
		case 'U': o.router_url = optarg; continue;
		case 'f': o.fresh_ids = 1; continue;
		case 'N': o.poll = 0; continue;
		case 'S': o.spread = 0; continue;
		case 'h': usage(stdout); return 0;
		case '?':
			fprintf(stderr, "mr-load: unknown option or missing value '%s' "
				"(see --help)\n", argv[optind - 1]);
			return 2;
		default: break;
		}
		if (number(name, optarg, 0, &v) < 0)
			return 2;
		switch (opt) {
		case 'n': agents = v; break;
		case 'w': window = v; break;
		case 'r': rate = v; break;
		case 'd': duration = v; break;
		case 'W': warmup = v; break;
		case 'i': interval = v; break;
		case 'c': clients = v; break;
		case 'R': rounds = v; break;
		case 'p': pid = v; break;
		case 'P': procs = v; break;
		case 'k': conc = v; break;
		case 'T': ctimeout = v; break;
		case 'D': drain = v; break;
		case 'b': pad = v; break;
		default: break;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	o.scenario = argv[optind];
	if (o.url == NULL || parse_url(o.url, o.host, sizeof o.host, &o.port) < 0) {
		fprintf(stderr, "mr-load: --url ws://HOST:PORT is required\n");
		return 2;
	}
	if (o.router_url != NULL &&
	    parse_url(o.router_url, o.router_host, sizeof o.router_host, &o.router_port) < 0) {
		fprintf(stderr, "mr-load: bad --router-url '%s'\n", o.router_url);
		return 2;
	}
	is_connect = strcmp(o.scenario, "connect") == 0;
	is_churn = strcmp(o.scenario, "churn") == 0;
	if (agents < 0)
		agents = strcmp(o.scenario, "heartbeat") == 0 ? 1000
			 : is_connect || is_churn ? 10000 : 100;
	if (interval < 0)
		interval = is_connect ? 6 : 0.1;
	if (duration < 0)
		duration = is_connect ? 2 * interval : 5;
	if (warmup < 0)
		warmup = is_connect ? 0 : 1;
	if (drain < 0)
		drain = is_churn ? 2 : 5;
	if (ctimeout < 0)
		ctimeout = agents / 200 > 30 ? agents / 200 : 30;
	if (agents < 1 || window < 1 || window > 1e6 || clients < 1 || clients > 1e5 ||
	    rounds < 1 || procs < 1 || procs > 64 || conc < 1 || interval < 0.001 ||
	    duration <= 0 || pad > 4096) {
		fprintf(stderr, "mr-load: a value is out of range (see --help)\n");
		return 2;
	}
	if (procs > 1 && !is_connect && strcmp(o.scenario, "heartbeat") != 0) {
		fprintf(stderr, "mr-load: --procs is for connect and heartbeat\n");
		return 2;
	}
	if (strncmp(o.host, "127.", 4) != 0)
		o.spread = 0; /* source addresses exist only on loopback */
	o.agents = (long)agents;
	o.window = (long)window;
	o.rate = rate;
	o.duration = duration;
	o.warmup = warmup;
	o.interval = interval;
	o.clients = (long)clients;
	o.rounds = (long)rounds;
	o.pid = (int)pid;
	o.procs = (long)procs;
	o.concurrency = (long)conc;
	o.connect_timeout = ctimeout;
	o.drain = drain;
	o.pad = (long)pad;
	return load_main(&o);
}
