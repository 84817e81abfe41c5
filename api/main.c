/*
 * millrace-api: the HTTP front end (POST /generate, /health, /stats, async
 * jobs). Not built yet: see issue #3. Until then this binary only answers
 * --help and says plainly that it cannot serve.
 */
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"

static const char *env_get(const char *name)
{
    return getenv(name);
}

int main(int argc, char **argv)
{
    const char *redis_url = NULL;
    long long port = 0;
    const struct config_option options[] = {
        {"port", "MILLRACE_PORT", CONFIG_INT, &port, "8000", 1, 65535, "PORT",
         "TCP port to listen on."},
        {"redis", "MILLRACE_REDIS", CONFIG_STRING, &redis_url, "redis://127.0.0.1:6379", 0, 0,
         "URL", "Redis to use: redis://[:password@]host[:port][/db] or a unix socket path."},
    };
    const struct config_spec spec = {
        "millrace-api [options]",
        "The millrace HTTP API. NOT IMPLEMENTED YET (issue #3): this build only prints help.",
        options, sizeof(options) / sizeof(options[0])};
    char err[256];
    int rc = config_parse(&spec, argc, argv, env_get, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        config_print_help(&spec, stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "millrace-api: %s\n", err);
        return 2;
    }
    fprintf(stderr, "millrace-api: the HTTP API is not implemented yet (issue #3)\n");
    return 1;
}
