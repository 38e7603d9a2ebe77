#include "log.h"

#include "clock.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *level_names[] = { "error", "warn", "info", "debug" };
static const int syslog_priority[] = { 3, 4, 6, 7 }; /* LOG_ERR .. LOG_DEBUG */
static enum log_level current_level = LOG_LVL_INFO;
static char process[32] = "mephisto-router";
static int with_time = 1;

void log_init(const char *process_name)
{
	snprintf(process, sizeof process, "%s", process_name);
	with_time = getenv("JOURNAL_STREAM") == NULL;
}

void log_set_level(enum log_level level) { current_level = level; }

enum log_level log_get_level(void) { return current_level; }

const char *log_level_name(enum log_level level)
{
	return level_names[level];
}

int log_level_parse(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

/* Messages quote what clients sent (agent ids, versions, reasons): a line
 * must stay one line and plain text whatever they hold, so a backslash is
 * written as \\, \n, \r and \t by name, other control characters and
 * bytes outside ASCII as \xNN, and the message is cut to fit out (outlen - 1
 * bytes and a NUL). Returns the length written. */
static size_t escape(char *out, size_t outlen, const char *in)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	for (const unsigned char *c = (const unsigned char *)in; *c; c++) {
		char e[4];
		size_t len = 1;

		e[0] = (char)*c;
		if (*c == '\n' || *c == '\r' || *c == '\t' || *c == '\\') {
			e[0] = '\\';
			e[1] = *c == '\n' ? 'n' : *c == '\r' ? 'r' : *c == '\t' ? 't' : '\\';
			len = 2;
		} else if (*c < 0x20 || *c >= 0x7f) {
			e[0] = '\\';
			e[1] = 'x';
			e[2] = hex[*c >> 4];
			e[3] = hex[*c & 15];
			len = 4;
		}
		if (n + len >= outlen)
			break;
		memcpy(out + n, e, len);
		n += len;
	}
	out[n] = '\0';
	return n;
}

static void log_write(enum log_level level, const char *fmt, va_list ap)
{
	char line[2048];
	size_t n = 0;

	/* Under systemd the journal takes the priority from a "<N>" prefix
	 * (sd-daemon(3)): journalctl -p warning then shows warnings and
	 * errors. */
	if (!with_time) {
		n = (size_t)snprintf(line, sizeof line, "<%d>", syslog_priority[level]);
	} else {
		/* whole microseconds first: the double's digits past them
		 * are noise, and truncating it could take a millisecond off */
		long long us = llround(clock_epoch() * 1e6);
		time_t secs = (time_t)(us / 1000000);
		struct tm tm;

		gmtime_r(&secs, &tm);
		n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ ",
				      (long)(us % 1000000 / 1000));
	}
	n += (size_t)snprintf(line + n, sizeof line - n, "%s %s: ",
			      level_names[level], process);
	if (n < sizeof line - 1) {
		char text[1024];

		vsnprintf(text, sizeof text, fmt, ap);
		n += escape(line + n, sizeof line - 1 - n, text);
	}
	line[n++] = '\n';
	/* One write(2) per line so lines of several processes do not mix. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	if (level > current_level)
		return;
	va_start(ap, fmt);
	log_write(level, fmt, ap);
	va_end(ap);
}

void fatal(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_write(LOG_LVL_ERROR, fmt, ap);
	va_end(ap);
	exit(1);
}
