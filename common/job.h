/*
 * job: the job protocol shared by the API and the workers; this module is
 * the request half (the response half is job_response.h).
 *
 * A generation request arrives as the JSON body of POST /generate (or
 * POST /jobs). job_request_parse() checks every field of the HTTP contract in
 * ../shared/DESIGN.md, applies the defaults and gives back a struct that owns
 * its strings; job_request_to_json() writes the canonical payload that goes
 * into the queue (every field, defaults filled in), which the worker parses
 * again with job_request_parse().
 *
 * A prompt is either `text` or `messages`, a chat (role + content per turn)
 * that the worker renders with the model's instruct template (worker/chat.h);
 * this module only checks its shape: roles, alternation, the last turn from
 * the user, sizes.
 *
 * Key decision: every rejected request names the field at fault. jansson
 * refuses some bodies before we see a value (an integer too big for
 * json_int_t, a byte that is not UTF-8, "\u0000" in a string, a duplicate
 * key); for those, jsonscan_locate() (common/jsonscan.h) walks the raw text
 * to find which top-level member holds the byte offset jansson reports.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* Return codes: 0, or one of these. */
#define JOB_ERR_INVALID (-1) /* the input is wrong: HTTP 400; err says why */
#define JOB_ERR_NOMEM   (-2) /* out of memory: HTTP 500 */

/*
 * Configured maxima. long long so that config options (CONFIG_INT) can point
 * straight at the fields.
 */
struct job_limits {
    long long max_num_samples;  /* num_samples <= this (16) */
    long long max_tokens_limit; /* max_tokens <= this (32768) */
    long long max_stop;         /* entries in stop (16) */
    long long max_stop_len;     /* bytes in each stop string (256) */
    long long max_eos_ids;      /* entries in eos_token_ids (64) */
    long long max_text_bytes;   /* bytes of text, or of all message contents, UTF-8 (1 MiB) */
};

#define JOB_LIMITS_DEFAULT                                                                         \
    {                                                                                              \
        .max_num_samples = 16, .max_tokens_limit = 32768, .max_stop = 16, .max_stop_len = 256,     \
        .max_eos_ids = 64, .max_text_bytes = 1048576,                                              \
    }

/* The defaults above, as a value. Thread-safe. */
struct job_limits job_limits_default(void);

/*
 * Why a body was rejected. field: the JSON field at fault ("" when the body as
 * a whole is wrong: not JSON, truncated, not an object). message: what is
 * wrong and what is allowed, e.g. "top_p must be a number in (0, 1], got 1.5".
 * Both are NUL-terminated valid UTF-8, cut at a character boundary when long.
 */
struct job_error {
    char field[64];
    char message[256];
};

/*
 * Fields the parser ignored. count: how many; names: the first
 * JOB_UNKNOWN_MAX_NAMES of them in body order (each cut to fit at a UTF-8
 * character boundary), so that the caller can write one log line.
 */
#define JOB_UNKNOWN_MAX_NAMES 8
struct job_unknown {
    size_t count;
    size_t n_names; /* min(count, JOB_UNKNOWN_MAX_NAMES) */
    char names[JOB_UNKNOWN_MAX_NAMES][64];
};

/* Who said a chat message. */
enum job_role { JOB_ROLE_SYSTEM, JOB_ROLE_USER, JOB_ROLE_ASSISTANT };

/* One turn of a chat. content: valid UTF-8, no NUL inside, NUL-terminated. */
struct job_message {
    enum job_role role;
    char *content;
    size_t content_len; /* bytes, without the terminator */
};

/* A validated request, every default applied. Owns everything it points to. */
struct job_request {
    char *text;      /* the prompt: valid UTF-8, no NUL inside, NUL-terminated; NULL when
                        the request has messages instead */
    size_t text_len; /* bytes, without the terminator */
    /* the chat instead of text (n_messages >= 1, text NULL), else NULL and 0: an optional
     * system message first, then user and assistant turns alternating, the last from the
     * user */
    struct job_message *messages;
    size_t n_messages;
    int max_tokens;     /* >= 1 */
    int *eos_token_ids; /* n_eos_token_ids ids, each >= 0; NULL when there are none */
    size_t n_eos_token_ids;
    int max_input_tokens; /* >= 0; 0: no limit */
    int num_samples;      /* >= 1 */
    char **stop;          /* n_stop non-empty NUL-terminated strings; NULL when none */
    size_t n_stop;
    double temperature;       /* >= 0, finite; 0: greedy */
    int top_k;                /* <= 0: disabled */
    double top_p;             /* in (0, 1] */
    double presence_penalty;  /* in [-2, 2] */
    double frequency_penalty; /* in [-2, 2] */
    int has_seed;             /* seed is set */
    uint64_t seed;            /* <= INT64_MAX */
    int stream;               /* extension: answer /generate as Server-Sent Events */
};

/*
 * Parse and validate a request body (`len` bytes, need not be NUL-terminated).
 *
 * Fields, types and defaults are those of the contract in DESIGN.md; in
 * addition:
 * - `messages` ([{"role": "system"|"user"|"assistant", "content": "..."}])
 *   may stand instead of text (exactly one of the two; errors name
 *   "messages", or "text" when neither is given): not empty; a system
 *   message only first; then user and assistant alternate, starting and
 *   ending with the user; each content a string; the contents together at
 *   most max_text_bytes; other keys in a message are ignored;
 * - a JSON null for an optional field means "use the default"; for text or
 *   max_tokens it is the same as leaving the field out (an error);
 * - a number field accepts integers (1 means 1.0); an integer field does not
 *   accept reals, not even 5.0;
 * - stop may also be a single string, read as a one-element list (as OpenAI
 *   does); each stop string must be non-empty;
 * - int fields are bounded by INT_MAX (eos ids, max_input_tokens, top_k too);
 * - duplicate keys are an error naming the key;
 * - unknown fields are ignored, and counted in *unknown.
 * Errors inside a member's value (bad UTF-8, "\u0000", a number jansson cannot
 * hold, a syntax error, nesting deeper than jansson's limit) name that
 * member's key; a truncated body, an empty one, or one that is not an object
 * gives field "".
 *
 * out: receives a new request (free with job_request_destroy), NULL on error.
 * lim: borrowed; NULL means the defaults. err: borrowed, filled on error (may
 * be NULL). unknown: borrowed, filled on success and on error (may be NULL).
 * Returns 0, JOB_ERR_INVALID or JOB_ERR_NOMEM. Thread-safe (jansson is, with
 * its default allocator). Reporting an error allocates nothing: the message
 * goes into *err, and whatever was built before the error is freed.
 */
int job_request_parse(struct job_request **out, const char *body, size_t len,
                      const struct job_limits *lim, struct job_error *err,
                      struct job_unknown *unknown);

/* "system", "user" or "assistant". Thread-safe. */
const char *job_role_name(enum job_role role);

/* Free a request and everything it owns. NULL is a no-op. */
void job_request_destroy(struct job_request *r);

/*
 * The canonical queue payload: one compact JSON object with every field in the
 * order of the contract, defaults filled in, seed only when has_seed, and
 * "messages" in the place of "text" when the request has them.
 * job_request_parse() of it gives a request equal to r (job_request_equal).
 * r: borrowed. out: receives a new NUL-terminated string (free with free()).
 * Returns 0, JOB_ERR_INVALID (text, a message or a stop string is not valid
 * UTF-8 or holds a NUL, neither or both of text and messages, a role out of
 * range, a double is not finite, a count does not match) or
 * JOB_ERR_NOMEM. Thread-safe.
 */
int job_request_to_json(const struct job_request *r, char **out);

/* 1 when a and b (borrowed) hold the same values, else 0. Doubles compare
 * with ==. Thread-safe. */
int job_request_equal(const struct job_request *a, const struct job_request *b);

/*
 * Write "a, b, c" (the names in u, borrowed), followed by ", ..." when more
 * were counted than kept, into buf (cap bytes, always NUL-terminated when
 * cap > 0, cut at a character boundary). Thread-safe.
 */
void job_unknown_format(const struct job_unknown *u, char *buf, size_t cap);

/*
 * Helpers shared by the protocol's two modules, job.c and job_response.c;
 * other callers have no use for them. Each is thread-safe. The jansson types
 * are declared, not included: json_t and json_error_t are typedefs of these
 * structs.
 */
struct json_t;
struct json_error_t;

/* Fill err (borrowed, may be NULL): field, and the message formatted from
 * fmt, both cut at a character boundary to fit and made valid UTF-8 whatever
 * the arguments hold. Returns JOB_ERR_INVALID. Allocates nothing. */
int job_fail(struct job_error *err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fill err (may be NULL) with field "" and "out of memory". Returns
 * JOB_ERR_NOMEM. */
int job_nomem(struct job_error *err);

/* A new NUL-terminated copy of s[0..n) (borrowed; may hold NULs), free with
 * free(); NULL when out of memory. */
char *job_dup_n(const char *s, size_t n);

/* What v (borrowed) is, for "got ...": an integer, real or boolean shows its
 * value (a real always with a '.' or an 'e'), null "null", anything else its
 * type ("string", "array", "object"). Returns buf (cap bytes, at least 32) or
 * a static string. */
const char *job_describe(const struct json_t *v, char *buf, size_t cap);

/* Turn jansson's refusal (je, borrowed) of body[0..len) into err (may be
 * NULL), naming the top-level member that holds the offset jansson reports
 * when there is one (field "" otherwise). Returns JOB_ERR_INVALID, or
 * JOB_ERR_NOMEM when jansson ran out of memory. Allocates nothing. */
int job_load_error(const char *body, size_t len, const struct json_error_t *je,
                   struct job_error *err);
