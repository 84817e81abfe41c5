/*
 * config: flags and environment variables from one table (see config.h).
 *
 * Key decision: no allocation. String values point into argv, the environment
 * or the default literal, all of which live as long as the process.
 */
#include "common/config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int config_set(const struct config_option *o, const char *text, const char *source,
                      char *err, size_t errlen)
{
    char *end = NULL;
    int bounded = !(o->min == 0 && o->max == 0);

    switch (o->type) {
    case CONFIG_STRING:
        *(const char **)o->value = text;
        return 0;
    case CONFIG_LIST: {
        struct config_list *l = o->value;
        if (l->n >= CONFIG_LIST_MAX) {
            snprintf(err, errlen, "%s: at most %d of them", source, CONFIG_LIST_MAX);
            return -1;
        }
        l->items[l->n++] = text;
        return 0;
    }
    case CONFIG_BOOL: {
        static const char *const yes[] = {"1", "true", "yes", "on"};
        static const char *const no[] = {"0", "false", "no", "off"};
        for (size_t i = 0; i < 4; i++) {
            if (strcasecmp(text, yes[i]) == 0) {
                *(int *)o->value = 1;
                return 0;
            }
            if (strcasecmp(text, no[i]) == 0) {
                *(int *)o->value = 0;
                return 0;
            }
        }
        snprintf(err, errlen, "%s: '%s' is not a boolean (use true or false)", source, text);
        return -1;
    }
    case CONFIG_INT: {
        errno = 0;
        long long v = strtoll(text, &end, 10);
        if (errno != 0 || end == text || *end != '\0') {
            snprintf(err, errlen, "%s: '%s' is not an integer", source, text);
            return -1;
        }
        if (bounded && ((double)v < o->min || (double)v > o->max)) {
            snprintf(err, errlen, "%s: %lld is out of range (allowed: %.0f to %.0f)", source, v,
                     o->min, o->max);
            return -1;
        }
        *(long long *)o->value = v;
        return 0;
    }
    case CONFIG_DOUBLE: {
        errno = 0;
        double v = strtod(text, &end);
        if (errno != 0 || end == text || *end != '\0' || !isfinite(v)) {
            snprintf(err, errlen, "%s: '%s' is not a number", source, text);
            return -1;
        }
        if (bounded && (v < o->min || v > o->max)) {
            snprintf(err, errlen, "%s: %g is out of range (allowed: %g to %g)", source, v, o->min,
                     o->max);
            return -1;
        }
        *(double *)o->value = v;
        return 0;
    }
    }
    snprintf(err, errlen, "%s: unknown option type", source);
    return -1;
}

static int is_bool_word(const char *s)
{
    static const char *const words[] = {"1", "true", "yes", "on", "0", "false", "no", "off"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strcasecmp(s, words[i]) == 0)
            return 1;
    return 0;
}

static const struct config_option *config_find(const struct config_spec *spec, const char *name,
                                               size_t len)
{
    for (size_t i = 0; i < spec->n_options; i++) {
        const struct config_option *o = &spec->options[i];
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0)
            return o;
    }
    return NULL;
}

int config_parse(const struct config_spec *spec, int argc, char **argv,
                 const char *(*getenv_fn)(const char *name), char *err, size_t errlen)
{
    char source[160];

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return CONFIG_HELP;
        if (strcmp(argv[i], "--") == 0)
            break;
    }

    for (size_t i = 0; i < spec->n_options; i++) {
        const struct config_option *o = &spec->options[i];
        if (o->type == CONFIG_STRING)
            *(const char **)o->value = NULL;
        if (o->type == CONFIG_LIST) {
            ((struct config_list *)o->value)->n = 0;
            continue; /* lists come from flags only */
        }
        if (o->def) {
            snprintf(source, sizeof(source), "default of --%s", o->name);
            if (config_set(o, o->def, source, err, errlen) < 0)
                return -1;
        }
        const char *env = (o->env && getenv_fn) ? getenv_fn(o->env) : NULL;
        if (env && *env) {
            snprintf(source, sizeof(source), "%s", o->env);
            if (config_set(o, env, source, err, errlen) < 0)
                return -1;
        }
    }

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            snprintf(err, errlen, "unexpected argument '%s' (see --help)", a);
            return -1;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const struct config_option *o = config_find(spec, name, len);
        const char *text = eq ? eq + 1 : NULL;
        if (!o && !eq && strncmp(name, "no-", 3) == 0) { /* --no-FLAG for a boolean */
            o = config_find(spec, name + 3, len - 3);
            if (o && o->type != CONFIG_BOOL)
                o = NULL;
            text = "false";
        }
        if (!o) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)len, name);
            return -1;
        }
        if (!text) {
            if (o->type == CONFIG_BOOL) {
                /* "--flag" alone is true; "--flag false" takes the next word if it is a boolean */
                text = "true";
                if (i + 1 < argc && is_bool_word(argv[i + 1]))
                    text = argv[++i];
            } else if (i + 1 < argc) {
                text = argv[++i];
            } else {
                snprintf(err, errlen, "--%s needs a value", o->name);
                return -1;
            }
        }
        snprintf(source, sizeof(source), "--%s", o->name);
        if (config_set(o, text, source, err, errlen) < 0)
            return -1;
    }
    return 0;
}

void config_print_help(const struct config_spec *spec, FILE *out)
{
    static const char *const type_arg[] = {"STR", "N", "X", "", "STR"};
    fprintf(out, "Usage: %s\n\n%s\n\nOptions (a flag wins over its environment variable):\n",
            spec->usage, spec->summary);
    for (size_t i = 0; i < spec->n_options; i++) {
        const struct config_option *o = &spec->options[i];
        const char *arg = o->arg ? o->arg : type_arg[o->type];
        char flag[96];
        snprintf(flag, sizeof(flag), "--%s%s%s", o->name, *arg ? " " : "", arg);
        fprintf(out, "  %-30s %s\n", flag, o->env ? o->env : "");
        fprintf(out, "      %s%s", o->help, o->type == CONFIG_LIST ? " (repeatable)" : "");
        if (o->def && *o->def)
            fprintf(out, " (default: %s)", o->def);
        fputc('\n', out);
    }
    fprintf(out, "  %-30s\n      Print this help and exit.\n", "--help");
}
