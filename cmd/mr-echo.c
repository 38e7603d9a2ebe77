/* mr-echo: command line of the echo server (bench/echo.c). */
#include "../bench/bench.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mr-echo [--address ADDR] [--port PORT] [--one-per-write]\n"
		"\n"
		"A WebSocket relay with a Mephisto router's message pattern and no\n"
		"routing: the connection whose first message is alive from \"mephisto\"\n"
		"is the backend; every other connection is an agent, whose alive is\n"
		"answered with update_status. Agents' messages go to the backend, the\n"
		"backend's to the agents round-robin. mr-load echo-limit measures it.\n"
		"\n"
		"  --address ADDR    IPv4 address to listen on (127.0.0.1)\n"
		"  --port PORT       port (0: any free one; the line printed at start\n"
		"                    says which)\n"
		"  --one-per-write   one frame per write, as lws's examples (and the\n"
		"                    router's worker) do; default: all waiting frames\n"
		"  --help            this text\n"
		"\n"
		"Stops on SIGTERM or SIGINT and prints what it relayed on stderr.\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "address", required_argument, NULL, 'a' },
		{ "port", required_argument, NULL, 'p' },
		{ "one-per-write", no_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct echo_opts o = { "127.0.0.1", 0, 0 };
	int opt;
	char *end;
	long port;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'a': o.address = optarg; break;
		case 'p':
			port = strtol(optarg, &end, 10);
			if (*optarg == '\0' || *end != '\0' || port < 0 || port > 65535) {
				fprintf(stderr, "mr-echo: bad port '%s'\n", optarg);
				return 2;
			}
			o.port = (int)port;
			break;
		case 'o': o.one_per_write = 1; break;
		case 'h': usage(stdout); return 0;
		default:
			fprintf(stderr, "mr-echo: unknown option '%s' (see --help)\n",
				argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mr-echo: unexpected argument '%s' (see --help)\n", argv[optind]);
		return 2;
	}
	return echo_main(&o);
}
