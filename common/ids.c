/*
 * ids: random identifiers (see ids.h).
 */
#include "common/ids.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int ids_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        if (got < 0)
            return -1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

int ids_job_id(char out[IDS_JOB_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[IDS_JOB_ID_LEN / 2];
    if (ids_random_bytes(raw, sizeof(raw)) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[IDS_JOB_ID_LEN] = '\0';
    return 0;
}

int ids_job_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 c == '-' || c == '_';
        if (!ok)
            return 0;
    }
    return 1;
}

uint64_t ids_seed(void)
{
    uint64_t s;
    if (ids_random_bytes(&s, sizeof(s)) == 0)
        return s;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
}
