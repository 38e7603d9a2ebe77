/* mephisto-router: command line and wiring only. */
#include "../core/config.h"
#include "../core/log.h"
#include "../supervisor/status.h"
#include "../supervisor/supervisor.h"
#include "../worker/worker.h"

#include <event2/event.h>
#include <getopt.h>
#include <jansson.h>
#include <libwebsockets.h>
#include <msgpack.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <yajl/yajl_version.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The version, the commit built and the libraries' versions as they run. */
static void version(FILE *out)
{
	char lws[32];
	int y = yajl_version();

	/* lws's own build appends a git describe of whatever tree it was
	 * built in: the release is what precedes it */
	snprintf(lws, sizeof lws, "%s", lws_get_library_version());
	lws[strcspn(lws, "- ")] = '\0';
	fprintf(out, "mephisto-router %s (commit %s)\n", MR_VERSION, MR_COMMIT);
	fprintf(out, "libwebsockets %s with dist/lws-patches, libevent %s, SQLite %s, "
		"jansson %s, msgpack-c %s, yajl %d.%d.%d, %s\n", lws, event_get_version(),
		sqlite3_libversion(), jansson_version_str(), msgpack_version(), y / 10000,
		y / 100 % 100, y % 100, OpenSSL_version(OPENSSL_VERSION));
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: mephisto-router [--config FILE] [--check-config]\n"
		"       mephisto-router status [--config FILE] [--db FILE] [--json]\n"
		"       mephisto-router --help | --version\n"
		"\n"
		"A Mephisto router: serves task pages, turns HTTP requests into packets\n"
		"and routes packets between workers' browsers and the Mephisto backend.\n"
		"\n"
		"  --config FILE    read 'key = value' settings from FILE (README.md lists\n"
		"                   every key); without it the embedded default is used:\n"
		"                   port 3000, static files from ./static, state in\n"
		"                   ./mephisto-router.db, uploads in /tmp/, one worker per CPU\n"
		"  --check-config   validate the configuration, print it and exit\n"
		"  status           summarise the state database (state_path, or --db FILE)\n"
		"                   read-only; works while the router runs; --json for\n"
		"                   scripts\n"
		"  --help           this text\n"
		"  --version        print the version\n"
		"\n"
		"The environment variable PORT overrides the port. Signals: SIGHUP re-reads\n"
		"the config file, SIGTERM or SIGINT drain and stop.\n"
		"Exit codes: 0 stopped cleanly, 1 internal error, 2 configuration error.\n");
}

int main(int argc, char **argv)
{
	static const struct option options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "check-config", no_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "worker", required_argument, NULL, 'w' },
		{ "db", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config_path = NULL, *db_path = NULL;
	int check_only = 0, worker = 0, status = 0, json = 0, opt;
	struct config cfg;
	char err[1024];
	const char *exe;

	opterr = 0;
	if (argc > 1 && strcmp(argv[1], "status") == 0) {
		status = 1;
		argv[1] = argv[0];
		argv++;
		argc--;
	}
	while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
		switch (opt) {
		case 'c': config_path = optarg; break;
		case 'k': check_only = 1; break;
		case 'd': db_path = optarg; break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		case 'V': version(stdout); return 0;
		case 'w':
			worker = atoi(optarg);
			if (worker < 1 || worker > CONFIG_MAX_WORKERS) {
				fprintf(stderr, "mephisto-router: bad worker slot '%s'\n", optarg);
				return EXIT_CONFIG;
			}
			break;
		default:
			fprintf(stderr, "mephisto-router: unknown option '%s' (see --help)\n",
				argv[optind - 1]);
			return EXIT_CONFIG;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "mephisto-router: unexpected argument '%s' (see --help)\n",
			argv[optind]);
		return EXIT_CONFIG;
	}
	/* Workers get their config from the supervisor over IPC. */
	if (worker > 0)
		return worker_main(worker);

	config_defaults(&cfg);
	if ((config_path != NULL && config_load_file(&cfg, config_path, err, sizeof err) < 0) ||
	    config_apply_env(&cfg, err, sizeof err) < 0) {
		fprintf(stderr, "mephisto-router: %s\n", err);
		return EXIT_CONFIG;
	}
	if (status) {
		if ((json ? status_print_json : status_print)(db_path ? db_path : cfg.state_path,
							      cfg.metrics_listen, stdout, err,
							      sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			return 1;
		}
		return 0;
	}
	if (db_path != NULL || json) {
		fprintf(stderr, "mephisto-router: --db and --json are for the status command\n");
		return EXIT_CONFIG;
	}
	if (check_only) {
		char *text;

		if (supervisor_check(&cfg, 0, err, sizeof err) < 0) {
			fprintf(stderr, "mephisto-router: %s\n", err);
			return EXIT_CONFIG;
		}
		text = config_format(&cfg);
		printf("# %s: ok\n%s", config_path ? config_path : "embedded default", text);
		free(text);
		return 0;
	}
	/* /proc/self/exe stays this very binary even if the file is replaced,
	 * so respawned workers always speak this supervisor's IPC version.
	 * Tools that run the router under an emulator (valgrind) name the
	 * binary in MEPHISTO_ROUTER_WORKER_EXE instead. */
	exe = getenv("MEPHISTO_ROUTER_WORKER_EXE");
	return supervisor_main(&cfg, config_path, exe && exe[0] ? exe : "/proc/self/exe");
}
