/* libFuzzer harness: core/config.c's parser (config_parse) on arbitrary
 * text, NUL-terminated like a config file read by config_load_file().
 *
 * Besides the sanitizers, one property: a text that parses formats back
 * (config_format, the text the supervisor hands every worker in its hello
 * and on SIGHUP) to a text that parses to the same config. If it did not,
 * a config the supervisor accepted would make every worker exit with a
 * configuration error. */
#include "../../core/config.h"
#include "../../core/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void broken(const char *what, const char *a, const char *b)
{
	fprintf(stderr, "fuzz_config: %s\n--- first:\n%s\n--- second:\n%s\n", what, a, b);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config c, again;
	char err[512], restart[1024];
	char *text = malloc(size + 1), *formatted, *reformatted;

	if (text == NULL)
		abort();
	memcpy(text, data, size);
	text[size] = '\0';
	log_set_level(LOG_LVL_ERROR);
	config_defaults(&c);
	err[0] = '\0';
	if (config_parse(&c, text, "fuzz.conf", err, sizeof err) < 0) {
		if (strncmp(err, "fuzz.conf:", 10) != 0)
			broken("an error that does not name the file and line", err, text);
		free(text);
		return 0;
	}
	formatted = config_format(&c);
	config_defaults(&again);
	if (config_parse(&again, formatted, "formatted", err, sizeof err) < 0)
		broken(err, text, formatted);
	reformatted = config_format(&again);
	if (strcmp(formatted, reformatted) != 0)
		broken("formatting is not stable", formatted, reformatted);
	/* the same config: nothing to reload, nothing that needs a restart */
	if (config_reload(&c, &again, restart, sizeof restart) != 0)
		broken("a reload of the same config wants a restart for", restart, formatted);
	free(reformatted);
	free(formatted);
	free(text);
	return 0;
}
