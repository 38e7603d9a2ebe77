/* Unit tests of core/log.c: a message that quotes what a client sent stays
 * one line of plain text, and is cut to a bounded length. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../core/log.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* What one log_info(fmt, arg) writes to stderr. */
static char *logged(const char *arg)
{
	static char buf[8192];
	int fds[2], saved = dup(STDERR_FILENO);
	ssize_t n;

	assert_int_equal(pipe(fds), 0);
	dup2(fds[1], STDERR_FILENO);
	log_info("agent %s: said hello", arg);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fds[1]);
	n = read(fds[0], buf, sizeof buf - 1);
	close(fds[0]);
	assert_true(n > 0);
	buf[n] = '\0';
	return buf;
}

static void test_newline_cannot_forge_a_line(void **state)
{
	char *line;

	(void)state;
	line = logged("a1\n2026-01-01T00:00:00.000Z error supervisor: forged");
	assert_non_null(strstr(line, "a1\\n2026-01-01"));
	assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
}

static void test_control_and_high_bytes_escaped(void **state)
{
	char *line;

	(void)state;
	line = logged("x\r\t\x01\x1b[31m\xff\\y");
	assert_non_null(strstr(line, "x\\r\\t\\x01\\x1b[31m\\xff\\\\y: said hello\n"));
}

static void test_long_message_cut(void **state)
{
	char *arg = malloc(100000), *line;

	(void)state;
	assert_non_null(arg);
	memset(arg, 'a', 99999);
	arg[99999] = '\0';
	line = logged(arg);
	assert_true(strlen(line) <= 2048);
	assert_int_equal(line[strlen(line) - 1], '\n');
	free(arg);
}

/* Under systemd (JOURNAL_STREAM) a line starts with its syslog priority. */
static void test_journal_priority_prefix(void **state)
{
	char *line;

	(void)state;
	setenv("JOURNAL_STREAM", "8:1234", 1);
	log_init("test");
	line = logged("x");
	assert_true(strncmp(line, "<6>info test: agent x", 21) == 0);
	unsetenv("JOURNAL_STREAM");
	log_init("test");
	line = logged("x");
	assert_true(line[0] >= '2' && line[0] <= '9'); /* a timestamp */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_newline_cannot_forge_a_line),
		cmocka_unit_test(test_control_and_high_bytes_escaped),
		cmocka_unit_test(test_long_message_cut),
		cmocka_unit_test(test_journal_priority_prefix),
	};

	log_init("test");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
