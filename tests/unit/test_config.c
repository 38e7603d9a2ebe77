/* Unit tests of the config parser: every key, every kind of error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/config.h"
#include "../../core/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

static char err[1024];

static int parse(struct config *c, const char *text)
{
	config_defaults(c);
	err[0] = '\0';
	return config_parse(c, text, "test.conf", err, sizeof err);
}

static void test_defaults(void **state)
{
	struct config c;

	(void)state;
	config_defaults(&c);
	assert_int_equal(c.port, 3000);
	assert_string_equal(c.listen_address, "0.0.0.0");
	assert_int_equal(c.workers, 0);
	assert_string_equal(c.static_dir, "./static");
	assert_string_equal(c.upload_dir, "/tmp/");
	assert_string_equal(c.state_path, "./mephisto-router.db");
	assert_int_equal(c.log_level, LOG_LVL_INFO);
	assert_int_equal(c.max_connections, 10000);
	assert_int_equal(c.max_message_bytes, 1 << 20);
	assert_int_equal(c.max_header_bytes, 8192);
	assert_int_equal(c.ipc_buffer_bytes, 16 << 20);
	assert_true(c.shutdown_timeout == 5.0);
	assert_true(c.respawn_max_delay == 10.0);
	assert_true(config_worker_count(&c) >= 1);
}

static void test_every_key(void **state)
{
	struct config c;

	(void)state;
	assert_int_equal(parse(&c,
			       "# a comment\n"
			       "\n"
			       "port = 8080\n"
			       "  listen_address=::1  \n"
			       "workers = 3\n"
			       "static_dir = /srv/static\n"
			       "upload_dir = /srv/up\n"
			       "state_path = /var/lib/mr/state.db\n"
			       "log_level = debug\n"
			       "max_connections = 20K\n"
			       "max_message_bytes = 2M\n"
			       "max_header_bytes = 16384\n"
			       "ipc_buffer_bytes = 1G\n"
			       "shutdown_timeout = 0.25\n"
			       "respawn_max_delay = 3\n"),
			 0);
	assert_int_equal(c.port, 8080);
	assert_string_equal(c.listen_address, "::1");
	assert_int_equal(c.workers, 3);
	assert_int_equal(config_worker_count(&c), 3);
	assert_string_equal(c.static_dir, "/srv/static");
	assert_string_equal(c.upload_dir, "/srv/up");
	assert_string_equal(c.state_path, "/var/lib/mr/state.db");
	assert_int_equal(c.log_level, LOG_LVL_DEBUG);
	assert_int_equal(c.max_connections, 20 * 1024);
	assert_int_equal(c.max_message_bytes, 2 << 20);
	assert_int_equal(c.max_header_bytes, 16384);
	assert_int_equal(c.ipc_buffer_bytes, 1 << 30);
	assert_true(c.shutdown_timeout == 0.25);
	assert_true(c.respawn_max_delay == 3.0);
}

static void expect_error(const char *text, const char *fragment)
{
	struct config c;

	assert_int_equal(parse(&c, text), -1);
	if (strstr(err, fragment) == NULL)
		fail_msg("error '%s' does not contain '%s'", err, fragment);
}

static void test_errors(void **state)
{
	(void)state;
	expect_error("foo = 1\n", "test.conf:1: unknown key 'foo'");
	expect_error("\n\nworkers = abc\n", "test.conf:3: workers: invalid value 'abc'");
	expect_error("workers = 65\n", "workers: invalid value '65' (must be between 0 and 64)");
	expect_error("workers = -1\n", "workers: invalid value '-1'");
	expect_error("workers = 2x\n", "expected an integer");
	expect_error("port = 0\n", "port: invalid value '0'");
	expect_error("port = 70000\n", "port: invalid value '70000'");
	expect_error("port =\n", "port: invalid value ''");
	expect_error("listen_address = localhost\n", "expected an IPv4 or IPv6 address");
	expect_error("static_dir =\n", "expected a non-empty path");
	expect_error("log_level = loud\n", "expected error, warn, info or debug");
	expect_error("max_message_bytes = 12Q\n", "optional K, M or G");
	expect_error("max_message_bytes = 10\n", "must be between 256");
	expect_error("max_header_bytes = 8MB\n", "max_header_bytes: invalid value");
	expect_error("shutdown_timeout = soon\n", "expected seconds");
	expect_error("shutdown_timeout = nan\n", "shutdown_timeout: invalid value");
	expect_error("respawn_max_delay = 0\n", "respawn_max_delay: invalid value");
	expect_error("port = 1\nport = 2\n", "test.conf:2: duplicated key 'port'");
	expect_error("just words\n", "test.conf:1: expected 'key = value'");
}

static void test_file(void **state)
{
	char path[] = "/tmp/mr-config-XXXXXX";
	int fd = mkstemp(path);
	struct config c;

	(void)state;
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "workers = 2\nbogus = 1\n", 22), 22);
	close(fd);
	config_defaults(&c);
	assert_int_equal(config_load_file(&c, path, err, sizeof err), -1);
	assert_non_null(strstr(err, ":2: unknown key 'bogus'"));
	assert_non_null(strstr(err, path));

	fd = open(path, O_WRONLY | O_TRUNC);
	assert_int_equal(write(fd, "workers = 2\0x", 13), 13);
	close(fd);
	config_defaults(&c);
	assert_int_equal(config_load_file(&c, path, err, sizeof err), -1);
	assert_non_null(strstr(err, "NUL"));
	unlink(path);

	config_defaults(&c);
	assert_int_equal(config_load_file(&c, path, err, sizeof err), -1);
	assert_non_null(strstr(err, "cannot read config file"));
	assert_non_null(strstr(err, "No such file"));
}

static void test_env_port(void **state)
{
	struct config c;

	(void)state;
	config_defaults(&c);
	setenv("PORT", "4321", 1);
	assert_int_equal(config_apply_env(&c, err, sizeof err), 0);
	assert_int_equal(c.port, 4321);
	setenv("PORT", "http", 1);
	assert_int_equal(config_apply_env(&c, err, sizeof err), -1);
	assert_non_null(strstr(err, "environment variable PORT"));
	unsetenv("PORT");
	config_defaults(&c);
	assert_int_equal(config_apply_env(&c, err, sizeof err), 0);
	assert_int_equal(c.port, 3000);
}

static void test_format_round_trip(void **state)
{
	struct config a, b;
	char *text;

	(void)state;
	assert_int_equal(parse(&a, "port = 9\nworkers = 7\nshutdown_timeout = 0.1\n"
				   "log_level = warn\nstatic_dir = /x y/z\n"), 0);
	text = config_format(&a);
	assert_non_null(strstr(text, "port = 9\n"));
	assert_non_null(strstr(text, "static_dir = /x y/z\n"));
	assert_int_equal(parse(&b, text), 0);
	free(text);
	assert_memory_equal(&a, &b, sizeof a);
}

static void test_reload(void **state)
{
	struct config running, loaded;
	char keys[256];

	(void)state;
	assert_int_equal(parse(&running, "workers = 2\nport = 3000\n"), 0);
	assert_int_equal(parse(&loaded, "workers = 4\nport = 3001\nlog_level = debug\n"
					"static_dir = /other\n"), 0);
	assert_int_equal(config_reload(&running, &loaded, keys, sizeof keys), 2);
	assert_string_equal(keys, "port, static_dir");
	assert_int_equal(running.workers, 4);
	assert_int_equal(running.log_level, LOG_LVL_DEBUG);
	assert_int_equal(running.port, 3000);
	assert_string_equal(running.static_dir, "./static");
	assert_int_equal(config_reload(&running, &running, keys, sizeof keys), 0);
	assert_string_equal(keys, "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_file),
		cmocka_unit_test(test_env_port),
		cmocka_unit_test(test_format_round_trip),
		cmocka_unit_test(test_reload),
	};
	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
