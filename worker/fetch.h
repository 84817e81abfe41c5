/*
 * fetch: turn a model spec into a local file, downloading it when needed.
 *
 * A spec is a local path, an http:// or https:// URL, or
 * `hf:owner/repo/path/file.gguf[@revision]` (Hugging Face:
 * <endpoint>/owner/repo/resolve/<revision, default main>/path/file.gguf).
 * Downloads go to a cache directory that mirrors the URL
 * (<cache>/<host>[_<port>]/<path>), so the same URL always names the same
 * file and a file that is there is used without any network request.
 *
 * Key decisions: bytes go to "<file>.part" and the file gets its final name
 * (rename) only once it is complete and, when a sha256 was given, checked;
 * an interrupted download resumes with an HTTP Range request from the
 * .part's size. The .part is held with flock(2) while it is written, so
 * several workers sharing one cache volume download a file once (the others
 * wait and then use it). Redirects are followed by hand, one request per
 * hop, so that the Authorization header (HF_TOKEN) goes only to the Hugging
 * Face endpoint itself (same scheme, host and port), never to a CDN or any
 * other host it redirects to, and never into a log line. A stalled transfer
 * is ended by a low-speed limit (default under 1 KB/s for 60 s), never by a
 * total timeout: a 15 GB model may take an hour.
 */
#pragma once

#include <stdatomic.h>
#include <stddef.h>

/* Errors (fetch_resolve_model's return value); every one comes with a message. */
#define FETCH_ESPEC      (-1) /* a malformed spec, or a local file that does not exist */
#define FETCH_EHTTP      (-2) /* the server answered an error status (401, 403, 404, 5xx...) */
#define FETCH_ENET       (-3) /* DNS, connection or TLS failure before any byte of the file */
#define FETCH_EPARTIAL   (-4) /* the transfer broke off: the .part is kept, a retry resumes */
#define FETCH_EIO        (-5) /* the cache directory or the file: disk full, permissions... */
#define FETCH_ECHECKSUM  (-6) /* the sha256 differs: the file was deleted */
#define FETCH_ECANCELLED (-7) /* *opts.cancel became non-zero: the .part is kept */

enum fetch_progress {
    FETCH_PROGRESS_AUTO = 0, /* a bar when stderr is a terminal, else log lines */
    FETCH_PROGRESS_BAR,      /* a bar on stderr rewritten with \r, ~4 times a second */
    FETCH_PROGRESS_LOG,      /* a log line every 10 % or 10 s */
    FETCH_PROGRESS_NONE,
};

/* Options; all zero (or a NULL pointer to them) gives the defaults. Strings borrowed. */
struct fetch_opts {
    const char *cache_dir;   /* NULL: $MILLRACE_CACHE, else $XDG_CACHE_HOME/millrace,
                                else $HOME/.cache/millrace */
    const char *sha256;      /* NULL, or the file's expected sha256 (64 hex digits) */
    const char *token;       /* NULL: $HF_TOKEN (or $HUGGING_FACE_HUB_TOKEN) */
    const char *hf_endpoint; /* NULL: $HF_ENDPOINT, else https://huggingface.co */
    int force;               /* download again even when the file is in the cache */
    int retries;             /* resume up to this many times within the call when the
                                transfer breaks off (1 s, 2 s, 4 s... apart); 0: none */
    enum fetch_progress progress;
    long connect_timeout_s;   /* 0: 30 */
    long low_speed_bytes;     /* abort when slower than this many bytes/s ... 0: 1024 */
    long low_speed_s;         /* ... for this many seconds; 0: 60 */
    const atomic_int *cancel; /* NULL, or a flag (a signal handler's, say) that stops the
                                 download within about a second when it becomes non-zero */
};

/*
 * Resolve spec (borrowed) to a local file and write its path to path_out
 * (cap bytes). A local path is checked to exist and returned as it is; a URL
 * or hf: spec is downloaded into the cache unless it is already there (see
 * the file comment). o may be NULL.
 * Returns 0, or one of the FETCH_E* codes with a one-line message in err
 * that says what to do (set HF_TOKEN, check the URL, run again to resume,
 * free disk space...). The message never contains the token.
 * Thread-safe (no shared state but libcurl's global initialisation, done
 * once); two calls for the same file, from threads or processes, download it
 * once. Blocks for the whole download.
 */
int fetch_resolve_model(const char *spec, const struct fetch_opts *o, char *path_out, size_t cap,
                        char *err, size_t errlen);

/* Whether spec is something fetch_resolve_model downloads (a URL or hf:), not a path. */
int fetch_is_remote(const char *spec);

/*
 * The URL of an hf: spec: endpoint (NULL: $HF_ENDPOINT or https://huggingface.co)
 * + "/owner/repo/resolve/<revision>/<file>", with the revision ('/' included)
 * and the file percent-encoded where needed. Returns 0, or FETCH_ESPEC with a
 * message when the spec is malformed. No network.
 */
int fetch_hf_url(const char *spec, const char *endpoint, char *url, size_t cap, char *err,
                 size_t errlen);

/*
 * Where url is cached under cache_dir (borrowed, not created):
 * <cache_dir>/<host>[_<port>]/<path components>, each component sanitised
 * to [A-Za-z0-9._+=@,-] ('_' for anything else, no leading '.'), and a hash
 * of the query string, when there is one, before the file's extension.
 * Returns 0, or FETCH_ESPEC (bad URL, no file name) with a message.
 */
int fetch_cache_path(const char *url, const char *cache_dir, char *path, size_t cap, char *err,
                     size_t errlen);

/* The default cache directory (see struct fetch_opts). 0, or FETCH_EIO when
 * no environment variable says where (no HOME). */
int fetch_default_cache_dir(char *out, size_t cap, char *err, size_t errlen);
