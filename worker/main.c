/*
 * millrace-worker: claims jobs from Redis and runs the model. Not built yet:
 * see issues #4 and #5. Until then this binary only answers --help and says
 * plainly that it cannot serve.
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
    const char *model = NULL;
    const struct config_option options[] = {
        {"redis", "MILLRACE_REDIS", CONFIG_STRING, &redis_url, "redis://127.0.0.1:6379", 0, 0,
         "URL", "Redis to use: redis://[:password@]host[:port][/db] or a unix socket path."},
        {"model", "MILLRACE_MODEL", CONFIG_STRING, &model, NULL, 0, 0, "FILE",
         "GGUF model file to serve."},
    };
    const struct config_spec spec = {
        "millrace-worker [options]",
        "The millrace worker. NOT IMPLEMENTED YET (issues #4, #5): this build only prints help.",
        options, sizeof(options) / sizeof(options[0])};
    char err[256];
    int rc = config_parse(&spec, argc, argv, env_get, err, sizeof(err));
    if (rc == CONFIG_HELP) {
        config_print_help(&spec, stdout);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "millrace-worker: %s\n", err);
        return 2;
    }
    fprintf(stderr, "millrace-worker: the worker is not implemented yet (issues #4, #5)\n");
    return 1;
}
