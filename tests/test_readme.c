/*
 * The README, run the way a newcomer runs it.
 *
 * scripts/run.sh (what `make run` runs) starts the whole stack on a free
 * port. Every example in the README's ```sh blocks that starts with "$ " is
 * then run with bash against it: localhost:8000 becomes the stack's port,
 * localhost:8001 an API of the same stack started with --api-keys, the
 * "no worker running" example an API whose Redis prefix no worker serves,
 * /tmp/ a directory of the test's, and every job id the README shows the id
 * this run got in its place. Each output must have the README's shape: the
 * same lines; JSON with the same keys and the same values wherever a value
 * does not depend on the run (error messages, statuses, token counts and
 * ids, prompts); streams with the same events in the same order (a run of
 * delta events counts as one). Then SIGINT, as Ctrl-C sends it, must stop
 * the script with status 0 and leave none of its three processes and not
 * its temporary directory.
 *
 * A second run serves MODEL=http://127.0.0.1:.../demo.gguf from a loopback
 * file server: the worker downloads it into MILLRACE_CACHE and answers, and
 * the CLI then finds the same URL in the cache without a request. And the
 * configuration tables are what scripts/config-table.sh makes of --help.
 *
 * Built only without sanitizers: the examples name build/ programs.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "tests/support/file_server.h"
#include "tests/support/http.h"
#include "tests/support/proc.h"

#define DEMO_MODEL "build/models/demo-small-q8_0.gguf"

static char tmpdir[64];

/* ---- small helpers ------------------------------------------------------ */

struct buf {
    char *s;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_fmt(struct buf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    buf_str(b, tmp);
}

/* The whole file (new, NUL-terminated), or NULL. */
static char *slurp(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_add(&b, chunk, n);
    fclose(f);
    if (!b.s)
        buf_str(&b, "");
    if (len_out)
        *len_out = b.len;
    return b.s;
}

static void show_log(const char *path)
{
    char *log = slurp(path, NULL);
    fprintf(stderr, "---- %s\n%s----\n", path, log ? log : "(none)\n");
    free(log);
}

/* Run a bash script (its text); stdout and stderr into *out (new). Returns the
 * exit status, or -1. */
static int run_bash(const char *script, char **out)
{
    char path[128], cmd[256];
    snprintf(path, sizeof(path), "%s/example.sh", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(script, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "timeout 120 bash %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    struct buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), p)) > 0)
        buf_add(&b, chunk, n);
    if (!b.s)
        buf_str(&b, "");
    int status = pclose(p);
    *out = b.s;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* GET url; the status, or 0 when nothing answered. */
static long http_status(const char *url)
{
    struct http_response r;
    http_request("GET", url, NULL, NULL, 0, 5000, &r);
    long status = r.status;
    http_response_fini(&r);
    return status;
}

/* ---- scripts/run.sh ----------------------------------------------------- */

struct run_sh {
    struct proc p;
    int port;
    char log[128];
    char dir[128];       /* its temporary directory (Redis's socket and data) */
    pid_t children[3];   /* redis-server, millrace-api, millrace-worker */
    char comms[3][32];   /* their command names */
    long long starts[3]; /* their start times (/proc/PID/stat field 22) */
};

/* Field 22 of /proc/pid/stat (start time) and the command name, or -1. */
static long long proc_start_time(pid_t pid, pid_t *ppid, char *comm, size_t cap)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    char *stat = slurp(path, NULL);
    if (!stat)
        return -1;
    char *open = strchr(stat, '('), *close = strrchr(stat, ')');
    long long start = -1;
    if (open && close) {
        if (comm)
            snprintf(comm, cap, "%.*s", (int)(close - open - 1), open + 1);
        /* after ")": state(3) ppid(4) ... starttime(22) */
        char *save = NULL, *tok = strtok_r(close + 2, " ", &save);
        for (int field = 3; tok; field++, tok = strtok_r(NULL, " ", &save)) {
            if (field == 4 && ppid)
                *ppid = (pid_t)atoi(tok);
            if (field == 22) {
                start = atoll(tok);
                break;
            }
        }
    }
    free(stat);
    return start;
}

/* The children of pid: up to cap of them into out (with names and start times). */
static int children_of(pid_t parent, pid_t *out, char (*comms)[32], long long *starts, int cap)
{
    DIR *d = opendir("/proc");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid = (pid_t)atoi(e->d_name), ppid = 0;
        char comm[32];
        if (pid <= 0)
            continue;
        long long start = proc_start_time(pid, &ppid, comm, sizeof(comm));
        if (start < 0 || ppid != parent || n == cap)
            continue;
        out[n] = pid;
        snprintf(comms[n], 32, "%s", comm);
        starts[n++] = start;
    }
    closedir(d);
    return n;
}

static int has_comm(const struct run_sh *r, const char *comm)
{
    for (int i = 0; i < 3; i++)
        if (strncmp(r->comms[i], comm, 15) == 0) /* the kernel keeps 15 bytes */
            return 1;
    return 0;
}

/* The run being tested, for the teardown: a test that fails half-way must not
 * leave run.sh's children (in their own sessions) running. */
static struct run_sh *current;

static int kill_current(void **state)
{
    (void)state;
    if (!current)
        return 0;
    proc_stop(&current->p, SIGKILL, 1000);
    for (int i = 0; i < 3; i++)
        if (current->children[i] > 0 &&
            proc_start_time(current->children[i], NULL, NULL, 0) == current->starts[i])
            kill(current->children[i], SIGKILL);
    current = NULL;
    return 0;
}

/* Start scripts/run.sh (MODEL=model, "" for the demo model) and wait until
 * /health says a worker serves and the script has said so. */
static void run_sh_start(struct run_sh *r, const char *model, const char *cache)
{
    memset(r, 0, sizeof(*r));
    r->port = proc_free_port();
    assert_true(r->port > 0);
    snprintf(r->log, sizeof(r->log), "%s/run-%d.log", tmpdir, r->port);
    char port_env[32], model_env[512], cache_env[256];
    snprintf(port_env, sizeof(port_env), "PORT=%d", r->port);
    snprintf(model_env, sizeof(model_env), "MODEL=%s", model);
    snprintf(cache_env, sizeof(cache_env), "MILLRACE_CACHE=%s", cache);
    char *env[] = {port_env, model_env, cache_env, "THREADS=2", NULL};
    char *argv[] = {"scripts/run.sh", NULL};
    assert_int_equal(proc_start(&r->p, argv, env, r->log), 0);
    current = r;

    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/health", r->port);
    long status = 0;
    for (int i = 0; i < 1800 && status != 200 && proc_alive(&r->p); i++) {
        status = http_status(url);
        if (status != 200)
            usleep(100 * 1000);
    }
    if (status != 200)
        show_log(r->log);
    assert_int_equal(status, 200);

    /* "redis-server on DIR/redis.sock" in its log, then "millrace is up" */
    char *log = NULL;
    for (int i = 0; i < 100; i++) {
        free(log);
        log = slurp(r->log, NULL);
        assert_non_null(log);
        if (strstr(log, "millrace is up on http://127.0.0.1:"))
            break;
        usleep(100 * 1000);
    }
    assert_non_null(strstr(log, "millrace is up on http://127.0.0.1:"));
    const char *on = strstr(log, "redis-server on ");
    assert_non_null(on);
    on += strlen("redis-server on ");
    const char *end = strstr(on, "/redis.sock");
    assert_non_null(end);
    snprintf(r->dir, sizeof(r->dir), "%.*s", (int)(end - on), on);
    free(log);
    struct stat sb;
    assert_int_equal(stat(r->dir, &sb), 0);

    assert_int_equal(children_of(r->p.pid, r->children, r->comms, r->starts, 3), 3);
    assert_true(has_comm(r, "redis-server"));
    assert_true(has_comm(r, "millrace-api"));
    assert_true(has_comm(r, "millrace-worker"));
}

/* Ctrl-C: the script ends with 0, its processes and its directory are gone. */
static void run_sh_interrupt(struct run_sh *r)
{
    assert_int_equal(proc_signal(&r->p, SIGINT), 0);
    int status = 0;
    if (proc_wait(&r->p, 60000, &status) < 0) {
        show_log(r->log);
        proc_stop(&r->p, SIGKILL, 1000);
        fail_msg("scripts/run.sh did not end within 60 s of SIGINT");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    for (int i = 0; i < 3; i++) {
        long long start = proc_start_time(r->children[i], NULL, NULL, 0);
        if (start == r->starts[i])
            fail_msg("%s (pid %d) is still running after Ctrl-C", r->comms[i], (int)r->children[i]);
    }
    struct stat sb;
    assert_int_equal(stat(r->dir, &sb), -1);
    char *log = slurp(r->log, NULL);
    assert_non_null(strstr(log, "run: stopped"));
    free(log);
    current = NULL;
}

/* ---- the README's examples --------------------------------------------- */

struct example {
    int line;       /* of its "$ " in README.md */
    char *command;  /* new */
    char *expected; /* new: the output the README shows */
};

/* Whether text ends inside a quote (the command goes on on the next line). */
static int open_quote(const char *s)
{
    char q = 0;
    for (; *s; s++) {
        if (q == '\'') {
            if (*s == '\'')
                q = 0;
        } else if (q == '"') {
            if (*s == '\\' && s[1])
                s++;
            else if (*s == '"')
                q = 0;
        } else if (*s == '\\' && s[1]) {
            s++;
        } else if (*s == '\'' || *s == '"') {
            q = *s;
        }
    }
    return q != 0;
}

static int continues(const struct buf *cmd)
{
    return open_quote(cmd->s) || (cmd->len && cmd->s[cmd->len - 1] == '\\');
}

/* Every "$ " example of README.md's ```sh blocks, in order; returns how many. */
static int readme_examples(struct example *out, int cap)
{
    char *text = slurp("README.md", NULL);
    assert_non_null(text);
    int n = 0, in_sh = 0, in_block = 0, lineno = 0;
    struct buf cmd = {0}, expected = {0};
    int cur_line = 0, have = 0;
    /* strtok_r would skip empty lines: split by hand */
    for (char *line = text, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        int fence = strncmp(line, "```", 3) == 0;
        int starts = in_sh && strncmp(line, "$ ", 2) == 0;
        if (have && (fence || starts)) {
            assert_true(n < cap);
            out[n].line = cur_line;
            out[n].command = cmd.s;
            out[n].expected = expected.s ? expected.s : strdup("");
            n++;
            memset(&cmd, 0, sizeof(cmd));
            memset(&expected, 0, sizeof(expected));
            have = 0;
        }
        if (fence) {
            in_sh = !in_block && strcmp(line + 3, "sh") == 0;
            in_block = !in_block;
            continue;
        }
        if (starts) {
            have = 1;
            cur_line = lineno;
            buf_str(&cmd, line + 2);
            while (continues(&cmd) && next) {
                line = next;
                next = strchr(line, '\n');
                if (next)
                    *next++ = '\0';
                lineno++;
                buf_str(&cmd, "\n");
                buf_str(&cmd, line);
            }
        } else if (have) {
            buf_str(&expected, line);
            buf_str(&expected, "\n");
        }
    }
    if (have) /* a block the README never closed */
        fail_msg("README.md:%d: the ```sh block of this example is not closed", cur_line);
    free(text);
    return n;
}

/* README job id -> this run's */
#define MAX_IDS 32
static char id_from[MAX_IDS][33], id_to[MAX_IDS][33];
static int n_ids;

static int is_hex32(const char *s)
{
    for (int i = 0; i < 32; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    char c = s[32];
    return !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
}

static int word_start(const char *text, const char *p)
{
    if (p == text)
        return 1;
    char c = p[-1];
    return !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
}

/* The 32-hex-digit ids in text, in order, into ids (at most cap). */
static int hex_ids(const char *text, char (*ids)[33], int cap)
{
    int n = 0;
    for (const char *p = text; *p; p++)
        if (word_start(text, p) && is_hex32(p)) {
            if (n < cap)
                snprintf(ids[n], 33, "%.32s", p);
            n++;
            p += 31;
        }
    return n;
}

struct ports {
    int main, keyed, idle;
};

/* The example as this run needs it (new). */
static char *localise(const char *s, const struct ports *pt)
{
    int idle = strstr(s, "no worker running") != NULL;
    char main_host[32], keyed_host[32], tmp[80];
    snprintf(main_host, sizeof(main_host), "127.0.0.1:%d", idle ? pt->idle : pt->main);
    snprintf(keyed_host, sizeof(keyed_host), "127.0.0.1:%d", pt->keyed);
    snprintf(tmp, sizeof(tmp), "%s/", tmpdir);
    struct buf b = {0};
    buf_str(&b, "");
    for (const char *p = s; *p;) {
        if (strncmp(p, "localhost:8000", 14) == 0) {
            buf_str(&b, main_host);
            p += 14;
        } else if (strncmp(p, "localhost:8001", 14) == 0) {
            buf_str(&b, keyed_host);
            p += 14;
        } else if (strncmp(p, "/tmp/", 5) == 0) {
            buf_str(&b, tmp);
            p += 5;
        } else if (word_start(s, p) && is_hex32(p)) {
            const char *to = p;
            for (int i = 0; i < n_ids; i++)
                if (strncmp(id_from[i], p, 32) == 0)
                    to = id_to[i];
            buf_add(&b, to, 32);
            p += 32;
        } else {
            buf_add(&b, p++, 1);
        }
    }
    return b.s;
}

/* Values that depend on the run are replaced by a placeholder; the rest stays. */
static const char *const exact_ints[] = {
    "prompt_tokens", "generated_tokens",  "num_samples", "tokens",  "sample",
    "attempts",      "num_total_runners", "runners",     "backlog", NULL};

static int in_list(const char *const *list, const char *key)
{
    for (; key && *list; list++)
        if (strcmp(*list, key) == 0)
            return 1;
    return 0;
}

static void shape_json(struct buf *b, json_t *v, const char *key)
{
    if (json_is_object(v)) {
        /* keys sorted: the order of a JSON object's keys is not its meaning */
        const char *keys[64];
        int n = 0;
        const char *k;
        json_t *child;
        json_object_foreach(v, k, child)
        {
            if (n < 64)
                keys[n++] = k;
        }
        for (int i = 1; i < n; i++)
            for (int j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
                const char *t = keys[j];
                keys[j] = keys[j - 1];
                keys[j - 1] = t;
            }
        buf_str(b, "{");
        for (int i = 0; i < n; i++) {
            buf_fmt(b, "%s:", keys[i]);
            shape_json(b, json_object_get(v, keys[i]), keys[i]);
            buf_str(b, ",");
        }
        buf_str(b, "}");
    } else if (json_is_array(v)) {
        size_t i;
        json_t *el;
        buf_str(b, "[");
        json_array_foreach(v, i, el)
        {
            shape_json(b, el, key);
            buf_str(b, ",");
        }
        buf_str(b, "]");
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (key && (strcmp(key, "text") == 0 || strcmp(key, "id") == 0))
            buf_str(b, "<run>");
        else
            buf_fmt(b, "\"%s\"", s);
    } else if (json_is_integer(v) && in_list(exact_ints, key)) {
        buf_fmt(b, "%lld", (long long)json_integer_value(v));
    } else if (json_is_number(v)) {
        buf_str(b, "<n>");
    } else {
        buf_str(b, json_is_true(v) ? "true" : json_is_false(v) ? "false" : "null");
    }
}

/* A Prometheus sample line: name{labels} value */
static int metric_line(const char *s)
{
    const char *p = s;
    while ((*p >= 'a' && *p <= 'z') || *p == '_')
        p++;
    if (p == s)
        return 0;
    if (*p == '{') {
        p = strchr(p, '}');
        if (!p)
            return 0;
        p++;
    }
    if (*p != ' ')
        return 0;
    p++;
    return *p && strspn(p, "0123456789.e+-") == strlen(p);
}

/* One output line's shape into b. */
static void shape_line(struct buf *b, const char *line)
{
    if (strncmp(line, "Date: ", 6) == 0 || strncmp(line, "Content-Length: ", 16) == 0)
        return;
    if (strncmp(line, "id: ", 4) == 0) {
        buf_str(b, "id: <run>\n");
        return;
    }
    const char *json = strncmp(line, "data: ", 6) == 0 ? line + 6 : line[0] == '{' ? line : NULL;
    json_t *v = json ? json_loads(json, JSON_DECODE_ANY, NULL) : NULL;
    if (v) {
        buf_add(b, line, (size_t)(json - line));
        shape_json(b, v, NULL);
        buf_str(b, "\n");
        json_decref(v);
        return;
    }
    if (metric_line(line)) {
        buf_add(b, line, strrchr(line, ' ') - line);
        buf_str(b, " <n>\n");
        return;
    }
    /* free text: measured decimals and ids vary, the rest must not */
    for (const char *p = line; *p;) {
        if (*p >= '0' && *p <= '9' && (p == line || !(p[-1] >= '0' && p[-1] <= '9'))) {
            const char *q = p;
            while (*q >= '0' && *q <= '9')
                q++;
            if (*q == '.' && q[1] >= '0' && q[1] <= '9') {
                for (q++; *q >= '0' && *q <= '9'; q++)
                    ;
                buf_str(b, "<n>");
                p = q;
                continue;
            }
        }
        if (word_start(line, p) && is_hex32(p)) {
            buf_str(b, "<id>");
            p += 32;
            continue;
        }
        buf_add(b, p++, 1);
    }
    buf_str(b, "\n");
}

/* The output's shape (new): line by line, and consecutive identical records
 * (blank-line separated, as Server-Sent Events are) counted once. */
static char *shape(const char *out)
{
    struct buf lines = {0}, res = {0};
    buf_str(&lines, "");
    buf_str(&res, "");
    char *copy = strdup(out);
    for (char *line = copy, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r')
            line[len - 1] = '\0';
        if (!*line)
            buf_str(&lines, "\n");
        else
            shape_line(&lines, line);
    }
    free(copy);
    /* records: split at "\n\n" */
    char *prev = NULL;
    for (char *rec = lines.s; rec && *rec;) {
        char *end = strstr(rec, "\n\n");
        size_t len = end ? (size_t)(end - rec) + 1 : strlen(rec);
        char *one = strndup(rec, len);
        if (!prev || strcmp(prev, one) != 0) {
            buf_str(&res, one);
            buf_str(&res, "\n");
        }
        free(prev);
        prev = one;
        rec = end ? end + 2 : NULL;
        while (rec && *rec == '\n')
            rec++;
    }
    free(prev);
    free(lines.s);
    return res.s;
}

/* Pair the README's ids with this run's, in order of appearance: an id the
 * README showed before (already this run's in expected) must come back the
 * same; a new one is learnt. */
static void learn_ids(const struct example *ex, const char *expected, const char *got)
{
    char want[16][33], have[16][33];
    int nw = hex_ids(expected, want, 16), nh = hex_ids(got, have, 16);
    if (nw != nh)
        return; /* the shapes differ too, and that is what fails */
    for (int i = 0; i < nw && i < 16; i++) {
        int known = 0;
        for (int j = 0; j < n_ids; j++)
            known |= strcmp(id_to[j], want[i]) == 0;
        if (known && strcmp(want[i], have[i]) != 0)
            fail_msg("README.md:%d: this run's job %s was expected, got %s", ex->line, want[i],
                     have[i]);
        if (!known) {
            assert_true(n_ids < MAX_IDS);
            memcpy(id_from[n_ids], want[i], 33);
            memcpy(id_to[n_ids++], have[i], 33);
        }
    }
}

static void run_example(const struct example *ex, const struct ports *pt)
{
    char *cmd = localise(ex->command, pt);
    char *expected = localise(ex->expected, pt);
    char *got = NULL;
    int rc = run_bash(cmd, &got);
    char *want_shape = shape(expected), *got_shape = shape(got);
    if (rc != 0 || strcmp(want_shape, got_shape) != 0) {
        fprintf(stderr,
                "README.md:%d: the example does not do what the README shows\n"
                "---- command (exit %d)\n%s\n---- README shows\n%s---- it printed\n%s"
                "---- README's shape\n%s---- its shape\n%s----\n",
                ex->line, rc, cmd, expected, got, want_shape, got_shape);
        fail();
    }
    learn_ids(ex, expected, got);
    printf("ok: README.md:%d %.*s\n", ex->line, (int)strcspn(ex->command, "\n"), ex->command);
    free(want_shape);
    free(got_shape);
    free(got);
    free(expected);
    free(cmd);
}

/* An extra millrace-api on the run's Redis (args after the fixed ones). */
static void start_api(struct proc *p, int port, const struct run_sh *r, const char *a1,
                      const char *a2)
{
    char port_s[16], redis[160], log[128];
    snprintf(port_s, sizeof(port_s), "%d", port);
    snprintf(redis, sizeof(redis), "%s/redis.sock", r->dir);
    snprintf(log, sizeof(log), "%s/api-%d.log", tmpdir, port);
    char *argv[] = {
        "build/millrace-api", "--host",   "127.0.0.1", "--port", port_s, "--redis", redis,
        (char *)a1,           (char *)a2, NULL};
    assert_int_equal(proc_start(p, argv, NULL, log), 0);
    assert_int_equal(proc_wait_port(port, 10000), 0);
}

static void test_make_run_answers_every_readme_example_and_stops_on_ctrl_c(void **state)
{
    (void)state;
    static struct run_sh r; /* static: the teardown reads it after a failure */
    char cache[128];
    snprintf(cache, sizeof(cache), "%s/cache", tmpdir);
    run_sh_start(&r, "", cache);
    char *log = slurp(r.log, NULL);
    assert_non_null(strstr(log, "demo model with random weights"));
    free(log);

    struct ports pt = {.main = r.port, .keyed = proc_free_port(), .idle = proc_free_port()};
    struct proc keyed, idle;
    start_api(&keyed, pt.keyed, &r, "--api-keys", "sk-test-1,sk-test-2");
    start_api(&idle, pt.idle, &r, "--redis-prefix", "{idle}");

    struct example ex[64];
    int n = readme_examples(ex, 64);
    assert_true(n >= 20); /* the README has its examples */
    int shared = access("../shared/models", R_OK) == 0, ran = 0;
    for (int i = 0; i < n; i++) {
        if (!shared && strstr(ex[i].command, "../shared/")) {
            printf("skipped: README.md:%d needs ../shared/models\n", ex[i].line);
        } else {
            run_example(&ex[i], &pt);
            ran++;
        }
        free(ex[i].command);
        free(ex[i].expected);
    }
    printf("%d README examples ran\n", ran);

    proc_stop(&keyed, SIGTERM, 10000);
    proc_stop(&idle, SIGTERM, 10000);
    run_sh_interrupt(&r);
}

static void test_make_run_serves_a_model_by_url(void **state)
{
    (void)state;
    size_t len;
    char *model = slurp(DEMO_MODEL, &len); /* the first test's run made it */
    assert_non_null(model);
    struct file_server *fs;
    struct file_server_opts fo = {.data = model, .len = len, .path = "/models/demo.gguf"};
    assert_int_equal(file_server_start(&fs, &fo), 0);
    char url[256], cache[128], cached[512];
    snprintf(url, sizeof(url), "%s/models/demo.gguf", file_server_base(fs));
    snprintf(cache, sizeof(cache), "%s/url-cache", tmpdir);

    static struct run_sh r; /* static: the teardown reads it after a failure */
    run_sh_start(&r, url, cache);
    char *log = slurp(r.log, NULL);
    assert_non_null(strstr(log, "the worker downloads it into its cache"));
    free(log);
    struct file_server_request reqs[4];
    assert_int_equal(file_server_requests(fs, reqs, 4), 1);
    assert_string_equal(reqs[0].method, "GET");
    assert_int_equal(reqs[0].status, 200);

    /* it answers from the downloaded model */
    char gen[128];
    snprintf(gen, sizeof(gen), "http://127.0.0.1:%d/generate", r.port);
    const char *body = "{\"text\": \"Once upon a time\", \"max_tokens\": 4}";
    const char *hdr[] = {"Content-Type: application/json", NULL};
    struct http_response resp;
    assert_int_equal(http_request("POST", gen, hdr, body, strlen(body), 60000, &resp), 0);
    assert_int_equal(resp.status, 200);
    json_t *j = json_loads(resp.body, 0, NULL);
    assert_non_null(j);
    json_t *first = json_array_get(json_object_get(j, "responses"), 0);
    assert_int_equal(json_integer_value(json_object_get(first, "generated_tokens")), 4);
    json_decref(j);
    http_response_fini(&resp);
    run_sh_interrupt(&r);

    /* the file in the cache is the model; the CLI finds it there */
    snprintf(cached, sizeof(cached), "%s/127.0.0.1_%d/models/demo.gguf", cache,
             file_server_port(fs));
    size_t cached_len;
    char *bytes = slurp(cached, &cached_len);
    assert_non_null(bytes);
    assert_int_equal(cached_len, len);
    assert_memory_equal(bytes, model, len);
    free(bytes);
    char script[1024], *by_url, *by_file;
    snprintf(script, sizeof(script),
             "MILLRACE_CACHE=%s build/millrace-worker tokenize --model %s --text 'Hello world'",
             cache, url);
    assert_int_equal(run_bash(script, &by_url), 0);
    snprintf(script, sizeof(script),
             "build/millrace-worker tokenize --model %s --text 'Hello world'", DEMO_MODEL);
    assert_int_equal(run_bash(script, &by_file), 0);
    assert_non_null(strstr(by_url, "using the cached"));
    size_t lu = strlen(by_url), lf = strlen(by_file);
    assert_true(lf > 2 && lu > lf);
    assert_string_equal(by_url + lu - lf, by_file);         /* the same ids */
    assert_int_equal(file_server_requests(fs, reqs, 4), 1); /* no second download */
    free(by_url);
    free(by_file);
    file_server_stop(fs);
    free(model);
}

/* The configuration tables are scripts/config-table.sh's output: every line
 * of it (each flag, its variable, default and text) is in the README. */
static void test_readme_lists_every_flag_as_the_programs_do(void **state)
{
    (void)state;
    char *tables = NULL, *readme = slurp("README.md", NULL);
    assert_non_null(readme);
    assert_int_equal(run_bash("scripts/config-table.sh", &tables), 0);
    int rows = 0, missing = 0;
    for (char *line = tables, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (!*line)
            continue;
        char want[4096];
        snprintf(want, sizeof(want), "\n%s\n", line);
        rows += line[0] == '|';
        if (!strstr(readme, want)) {
            fprintf(stderr, "README.md lacks this line of scripts/config-table.sh:\n%s\n", line);
            missing++;
        }
    }
    printf("%d table rows checked\n", rows);
    assert_true(rows > 40);
    assert_int_equal(missing, 0);
    free(tables);
    free(readme);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/millrace-test-readme-XXXXXX");
    if (!mkdtemp(tmpdir) || http_global_init() != 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_make_run_answers_every_readme_example_and_stops_on_ctrl_c,
                                  kill_current),
        cmocka_unit_test_teardown(test_make_run_serves_a_model_by_url, kill_current),
        cmocka_unit_test(test_readme_lists_every_flag_as_the_programs_do),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
