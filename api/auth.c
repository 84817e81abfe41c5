/*
 * auth: API keys (see auth.h).
 *
 * Key decision: compare against every key, always over the longest key's
 * length, and combine the results with bitwise ORs, so the time depends only
 * on the number and maximum length of the configured keys.
 */
#include "api/auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define AUTH_KEY_MAX 256

struct auth {
    size_t n;
    size_t max_len;
    char (*keys)[AUTH_KEY_MAX + 1];
    size_t *lens;
};

static int add_key(struct auth *a, const char *s, size_t len, char *err, size_t errlen)
{
    while (len > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    while (len > 0 &&
           (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r' || s[len - 1] == '\n'))
        len--;
    if (len == 0)
        return 0;
    if (len > AUTH_KEY_MAX) {
        snprintf(err, errlen, "an API key is longer than %d characters", AUTH_KEY_MAX);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == 0x7f) {
            snprintf(err, errlen, "an API key contains a space or control character");
            return -1;
        }
    }
    void *k = realloc(a->keys, (a->n + 1) * sizeof(*a->keys));
    if (!k)
        goto oom;
    a->keys = k;
    void *l = realloc(a->lens, (a->n + 1) * sizeof(*a->lens));
    if (!l)
        goto oom;
    a->lens = l;
    memcpy(a->keys[a->n], s, len);
    a->keys[a->n][len] = '\0';
    a->lens[a->n] = len;
    if (len > a->max_len)
        a->max_len = len;
    a->n++;
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -1;
}

int auth_create(struct auth **out, const char *list, const char *file, char *err, size_t errlen)
{
    *out = NULL;
    struct auth *a = calloc(1, sizeof(*a));
    FILE *f = NULL;
    char *line = NULL;
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (const char *p = list; p && *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (add_key(a, p, len, err, errlen) < 0)
            goto fail;
        p = comma ? comma + 1 : p + len;
    }
    if (file && *file) {
        f = fopen(file, "r");
        if (!f) {
            snprintf(err, errlen, "cannot read API keys file %s: %s", file, strerror(errno));
            goto fail;
        }
        size_t cap = 0;
        ssize_t len;
        while ((len = getline(&line, &cap, f)) >= 0) {
            const char *s = line;
            while (*s == ' ' || *s == '\t')
                s++;
            if (*s == '#')
                continue;
            if (add_key(a, s, strlen(s), err, errlen) < 0)
                goto fail;
        }
        free(line);
        line = NULL;
        fclose(f);
        f = NULL;
    }
    if (a->n == 0) {
        auth_destroy(a);
        return 0;
    }
    *out = a;
    return 0;
fail:
    free(line);
    if (f)
        fclose(f);
    auth_destroy(a);
    return -1;
}

void auth_destroy(struct auth *a)
{
    if (!a)
        return;
    free(a->keys);
    free(a->lens);
    free(a);
}

size_t auth_count(const struct auth *a)
{
    return a ? a->n : 0;
}

int auth_check(const struct auth *a, const char *authorization)
{
    if (!a)
        return 1;
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return 0;
    const char *given = authorization + 7;
    while (*given == ' ')
        given++;
    size_t glen = strnlen(given, AUTH_KEY_MAX + 1);
    unsigned match = 0;
    for (size_t k = 0; k < a->n; k++) {
        unsigned diff = (unsigned)(glen != a->lens[k]);
        for (size_t i = 0; i < a->max_len; i++) {
            unsigned char g = i < glen ? (unsigned char)given[i] : 0;
            unsigned char c = (unsigned char)a->keys[k][i < a->lens[k] ? i : a->lens[k]];
            diff |= (unsigned)(g ^ c);
        }
        match |= (unsigned)(diff == 0);
    }
    return match != 0;
}
