/*
 * config: command-line flags and environment variables from one table.
 *
 * Each option is one row: its flag (`--port`), its environment variable
 * (`MILLRACE_PORT`), its type, its default, its range and its help. A flag
 * wins over the environment, which wins over the default. `--help` prints
 * every row, flags and variables side by side. Values are checked against
 * their type and range, and a bad one is an error that names the flag or the
 * variable it came from.
 */
#pragma once

#include <stddef.h>
#include <stdio.h>

enum config_type {
    CONFIG_STRING, /* value: const char ** (borrowed from argv, environ or the default) */
    CONFIG_INT,    /* value: long long * */
    CONFIG_DOUBLE, /* value: double * */
    CONFIG_BOOL,   /* value: int *; "--flag" alone is true; "--flag false", "--flag=no" and
                    * "--no-flag" set it false */
    CONFIG_LIST,   /* value: struct config_list *; each use of the flag adds one item (no
                    * environment variable, no default) */
};

#define CONFIG_LIST_MAX 64

struct config_list {
    const char *items[CONFIG_LIST_MAX]; /* borrowed from argv */
    int n;
};

struct config_option {
    const char *name; /* flag without the dashes: "port" */
    const char *env;  /* environment variable, or NULL for none */
    enum config_type type;
    void *value;     /* where the parsed value goes (borrowed) */
    const char *def; /* default, written as a user would; NULL: none (strings stay NULL) */
    double min, max; /* range for numbers; both 0: unbounded */
    const char *arg; /* placeholder in --help: "N", "URL"; NULL: from the type */
    const char *help;
};

struct config_spec {
    const char *usage;   /* "millrace-api [options]" */
    const char *summary; /* one paragraph under the usage line */
    const struct config_option *options;
    size_t n_options;
};

#define CONFIG_HELP 1

/*
 * Fill every option's value from defaults, then the environment, then argv
 * (argv[0] is skipped). `getenv_fn` is getenv in production; tests pass their
 * own. Returns 0, CONFIG_HELP when --help/-h was given (nothing else is
 * checked), or -1 with a message in err that names the flag or variable.
 * Not thread-safe; call from main().
 */
int config_parse(const struct config_spec *spec, int argc, char **argv,
                 const char *(*getenv_fn)(const char *name), char *err, size_t errlen);

/* Print the usage line, the summary and one entry per option to `out`. */
void config_print_help(const struct config_spec *spec, FILE *out);
