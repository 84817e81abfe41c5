/*
 * jsonscan: find the top-level member of a JSON object that holds a byte
 * offset, reading the raw text; and the UTF-8 helpers shared by the job
 * protocol's modules (see jsonscan.h).
 *
 * Key decision: no parser and no recursion. Strings are skipped quote to
 * quote, containers by counting brackets outside strings, scalars up to the
 * next delimiter; only the key that holds the offset is decoded. Broken text
 * ends the walk ("no member") rather than being guessed at, and every index
 * is checked against len before it is read.
 */
#include "common/jsonscan.h"

#include <stdint.h>
#include <string.h>

/* ---- UTF-8 ---- */

/* Decode one UTF-8 sequence from s[0..n) into *cp. Returns its length, or 0
 * when it is not valid (truncated, overlong, a surrogate, above U+10FFFF). */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
    uint32_t c;
    size_t k;

    if (n == 0)
        return 0;
    c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        k = 2;
        c &= 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        k = 3;
        c &= 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        k = 4;
        c &= 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if ((k == 3 && c < 0x800) || (k == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
        (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return k;
}

/* Whether s[0..n) is valid UTF-8 (NUL bytes count as valid). */
int jsonscan_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    uint32_t cp;

    while (n > 0) {
        size_t k = utf8_next(p, n, &cp);
        if (k == 0)
            return 0;
        p += k;
        n -= k;
    }
    return 1;
}

/* Encode cp (a valid scalar value) into out; returns the length. */
static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    } else if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    } else if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* s (NUL-terminated) was valid UTF-8 before it was cut at its end: drop a
 * sequence left incomplete there. */
void jsonscan_utf8_trim(char *s)
{
    size_t n = strlen(s), lead = n, need;
    unsigned char c;

    while (lead > 0 && n - lead < 4 && ((unsigned char)s[lead - 1] & 0xC0) == 0x80)
        lead--;
    if (lead == 0)
        return;
    c = (unsigned char)s[lead - 1];
    need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (n - (lead - 1) < need)
        s[lead - 1] = '\0';
}

/* Copy src[0..n) (valid UTF-8, no NUL) into dst[cap], cut at a character
 * boundary when it does not fit. */
void jsonscan_copy_cut(char *dst, size_t cap, const char *src, size_t n)
{
    size_t m;

    if (cap == 0)
        return;
    m = n < cap - 1 ? n : cap - 1;
    memcpy(dst, src, m);
    dst[m] = '\0';
    if (m < n)
        jsonscan_utf8_trim(dst);
}

/* Replace each byte of s (NUL-terminated) that does not start a valid UTF-8
 * sequence with '?'. jansson's messages quote the input near an error and
 * may cut a character there ("invalid escape near '"\u0<lead byte>'"). */
void jsonscan_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s);
    uint32_t cp;

    while (n > 0) {
        size_t k = utf8_next(p, n, &cp);
        if (k == 0) {
            *p = '?';
            k = 1;
        }
        p += k;
        n -= k;
    }
}

/* ---- scanning raw JSON ---- */

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && is_ws(s[i]))
        i++;
    return i;
}

/* s[i] is '"': one past the closing quote, or len when there is none. */
static size_t scan_string(const char *s, size_t len, size_t i)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* One past the end of the value starting at s[i]: a string, a container up
 * to its matching close (counted, not recursed), or a scalar token up to the
 * next delimiter (possibly empty). */
static size_t scan_value(const char *s, size_t len, size_t i)
{
    size_t depth = 0;

    if (i >= len)
        return len;
    if (s[i] == '"')
        return scan_string(s, len, i);
    if (s[i] == '{' || s[i] == '[') {
        while (i < len) {
            char c = s[i];
            if (c == '"') {
                i = scan_string(s, len, i);
                continue;
            }
            if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
            i++;
        }
        return len;
    }
    while (i < len && !is_ws(s[i]) && !memchr(",:{}[]\"", s[i], 7))
        i++;
    return i;
}

static int hex4(const char *s, size_t len, size_t i, uint32_t *out)
{
    uint32_t v = 0;

    if (len < 4 || i > len - 4)
        return -1;
    for (size_t k = 0; k < 4; k++) {
        char c = s[i + k];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Decode the key whose opening quote is s[i] into out[cap] (cut at a
 * character boundary). -1 when it is not valid UTF-8, holds a NUL or a bad
 * escape. */
static int decode_key(const char *s, size_t len, size_t i, char *out, size_t cap)
{
    size_t n = 0;
    int full = cap == 0;

    for (i++; i < len && s[i] != '"';) {
        uint32_t cp, lo;
        char tmp[4];
        size_t k;

        if (s[i] == '\\') {
            if (i + 1 >= len)
                return -1;
            switch (s[i + 1]) {
            case '"':
            case '\\':
            case '/':
                cp = (unsigned char)s[i + 1];
                break;
            case 'b':
                cp = '\b';
                break;
            case 'f':
                cp = '\f';
                break;
            case 'n':
                cp = '\n';
                break;
            case 'r':
                cp = '\r';
                break;
            case 't':
                cp = '\t';
                break;
            case 'u':
                if (hex4(s, len, i + 2, &cp) < 0)
                    return -1;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return -1;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (i + 7 >= len || s[i + 6] != '\\' || s[i + 7] != 'u' ||
                        hex4(s, len, i + 8, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
                i += 4;
                break;
            default:
                return -1;
            }
            i += 2;
        } else {
            k = utf8_next((const unsigned char *)s + i, len - i, &cp);
            if (k == 0)
                return -1;
            i += k;
        }
        if (cp == 0)
            return -1;
        k = utf8_put(cp, tmp);
        if (!full && n + k < cap) {
            memcpy(out + n, tmp, k);
            n += k;
        } else {
            full = 1;
        }
    }
    if (cap > 0)
        out[n] = '\0';
    return 0;
}

/* ---- locating a member ---- */

int jsonscan_locate(const char *body, size_t len, size_t offset, char *key_out, size_t cap,
                    int *in_key)
{
    const char *s = body ? body : "";
    size_t i, key_start, key_end, value_end;

    if (!body)
        len = 0;
    if (cap > 0)
        key_out[0] = '\0';
    i = skip_ws(s, len, 0);
    if (i >= len || s[i] != '{')
        return -1;
    i++;
    for (;;) {
        i = skip_ws(s, len, i);
        if (i >= len || s[i] == '}')
            return -1;
        if (s[i] == ',') {
            i++;
            continue;
        }
        if (s[i] != '"')
            return -1; // not a key: too broken to tell
        key_start = i;
        key_end = scan_string(s, len, i);
        i = skip_ws(s, len, key_end);
        if (i < len && s[i] == ':')
            i = skip_ws(s, len, i + 1);
        value_end = scan_value(s, len, i);
        if (offset >= key_start && offset <= value_end) {
            if (decode_key(s, len, key_start, key_out, cap) < 0) {
                if (cap > 0)
                    key_out[0] = '\0';
                return -1;
            }
            if (in_key)
                *in_key = offset <= key_end;
            return 0;
        }
        i = value_end; // never stuck: an empty value is followed by ',' or a give-up
    }
}
