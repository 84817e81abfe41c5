/*
 * Tests for worker/stopper.c: stops split over 1, 2 and 3 pieces; what is
 * held back and when it is released; overlapping and prefix stops; UTF-8
 * stops; and two randomised checks against a reference computed on the whole
 * text at once (the result must not depend on how the text was cut, and only
 * a suffix that could still become a stop may be held back).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common/jsonscan.h"
#include "worker/stopper.h"

/* ---- helpers ---- */

/* A stopper over NULL-terminated stop strings. */
static void init_stops(struct stopper *st, const char *const *stops)
{
    size_t lens[32];
    int n = 0;
    while (stops[n]) {
        lens[n] = strlen(stops[n]);
        n++;
    }
    assert_int_equal(stopper_init(st, stops, lens, n), 0);
}

/* Everything emitted so far, appended to by feed()/flush(). */
struct sink {
    char buf[1 << 12];
    size_t len;
};

static void sink_add(struct sink *k, const char *p, size_t n)
{
    assert_true(k->len + n <= sizeof k->buf);
    memcpy(k->buf + k->len, p, n);
    k->len += n;
}

/* Feed one NUL-terminated piece; check what it emits and the stopped flag. */
static void expect_feed(struct stopper *st, struct sink *k, const char *piece, const char *emits,
                        int stopped)
{
    const char *e = NULL;
    size_t elen = 99;
    int stop = -1;
    assert_int_equal(stopper_feed(st, piece, strlen(piece), &e, &elen, &stop), 0);
    assert_non_null(e);
    if (elen != strlen(emits) || memcmp(e, emits, elen) != 0)
        fail_msg("feeding \"%s\" emitted \"%.*s\", expected \"%s\"", piece, (int)elen, e, emits);
    assert_int_equal(stop, stopped);
    sink_add(k, e, elen);
}

static void expect_flush(struct stopper *st, struct sink *k, const char *emits)
{
    const char *e = NULL;
    size_t elen = 99;
    stopper_flush(st, &e, &elen);
    assert_non_null(e);
    if (elen != strlen(emits) || memcmp(e, emits, elen) != 0)
        fail_msg("flush emitted \"%.*s\", expected \"%s\"", (int)elen, e, emits);
    sink_add(k, e, elen);
}

/* The sink equals stopper_text() and the expected output. */
static void expect_text(struct stopper *st, const struct sink *k, const char *want)
{
    size_t len = 99;
    const char *t = stopper_text(st, &len);
    assert_int_equal(len, k->len);
    assert_memory_equal(t, k->buf, len);
    if (len != strlen(want) || memcmp(t, want, len) != 0)
        fail_msg("text is \"%.*s\", expected \"%s\"", (int)len, t, want);
}

/* ---- stops split over pieces ---- */

static void test_stop_inside_one_piece_emits_only_what_precedes_it(void **state)
{
    (void)state;
    const char *stops[] = {"STOP", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "hello STOP world", "hello ", 1);
    expect_text(&st, &k, "hello ");
    stopper_fini(&st);
}

static void test_stop_split_over_two_pieces(void **state)
{
    (void)state;
    const char *stops[] = {"STOP", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "hello ST", "hello ", 0);
    expect_feed(&st, &k, "OP world", "", 1);
    expect_text(&st, &k, "hello ");
    stopper_fini(&st);
}

static void test_stop_split_over_three_pieces(void **state)
{
    (void)state;
    const char *stops[] = {"STOP", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "x S", "x ", 0);
    expect_feed(&st, &k, "TO", "", 0);
    expect_feed(&st, &k, "P!", "", 1);
    expect_text(&st, &k, "x ");
    stopper_fini(&st);
}

static void test_stop_at_the_very_start_emits_nothing(void **state)
{
    (void)state;
    const char *stops[] = {"</s>", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "</", "", 0);
    expect_feed(&st, &k, "s>tail", "", 1);
    expect_text(&st, &k, "");
    stopper_fini(&st);
}

static void test_text_before_a_stop_in_a_later_piece_is_fully_emitted(void **state)
{
    (void)state;
    const char *stops[] = {"\n\n", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "one", "one", 0);
    expect_feed(&st, &k, " two\n", " two", 0);
    expect_feed(&st, &k, "\nthree", "", 1);
    expect_text(&st, &k, "one two");
    stopper_fini(&st);
}

static void test_feed_after_a_stop_takes_and_emits_nothing(void **state)
{
    (void)state;
    const char *stops[] = {"end", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "the end", "the ", 1);
    expect_feed(&st, &k, "more text", "", 1);
    expect_flush(&st, &k, "");
    expect_text(&st, &k, "the ");
    stopper_fini(&st);
}

/* ---- holding back ---- */

static void test_nothing_is_held_back_when_no_stop_prefix_matches(void **state)
{
    (void)state;
    const char *stops[] = {"xyz", "STOP", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "hello", "hello", 0);
    expect_feed(&st, &k, " world, xy and ST are fine", " world, xy and ST are fine", 0);
    expect_text(&st, &k, "hello world, xy and ST are fine");
    stopper_fini(&st);
}

static void test_held_back_part_is_released_by_flush(void **state)
{
    (void)state;
    const char *stops[] = {"STOP", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "abc ST", "abc ", 0);
    expect_flush(&st, &k, "ST");
    expect_text(&st, &k, "abc ST");
    stopper_fini(&st);
}

/* Flushed text is out: it can no longer be the start of a stop. */
static void test_feed_after_flush_does_not_match_across_it(void **state)
{
    (void)state;
    const char *stops[] = {"ab", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "a", "", 0);
    expect_flush(&st, &k, "a");
    expect_feed(&st, &k, "b", "b", 0);
    expect_text(&st, &k, "ab");
    stopper_fini(&st);
}

static void test_partial_match_that_breaks_is_released_at_once(void **state)
{
    (void)state;
    const char *stops[] = {"STOP", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "ST", "", 0);
    expect_feed(&st, &k, "AR", "STAR", 0);
    expect_text(&st, &k, "STAR");
    stopper_fini(&st);
}

static void test_repeated_partial_match_holds_only_the_live_part(void **state)
{
    (void)state;
    const char *stops[] = {"ab", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "a", "", 0);
    expect_feed(&st, &k, "a", "a", 0); // the first "a" can no longer start "ab"
    expect_feed(&st, &k, "b", "", 1);
    expect_text(&st, &k, "a");
    stopper_fini(&st);
}

static void test_self_overlapping_stop_is_found_after_a_false_start(void **state)
{
    (void)state;
    const char *stops[] = {"aab", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "a", "", 0);
    expect_feed(&st, &k, "a", "", 0);
    expect_feed(&st, &k, "a", "a", 0);
    expect_feed(&st, &k, "b", "", 1);
    expect_text(&st, &k, "a");
    stopper_fini(&st);
}

static void test_empty_stop_list_emits_everything_at_once(void **state)
{
    (void)state;
    struct stopper st;
    struct sink k = {0};
    assert_int_equal(stopper_init(&st, NULL, NULL, 0), 0);
    expect_feed(&st, &k, "a", "a", 0);
    expect_feed(&st, &k, "bc STOP", "bc STOP", 0);
    expect_flush(&st, &k, "");
    expect_text(&st, &k, "abc STOP");
    stopper_fini(&st);
}

/* ---- several stops ---- */

static void test_overlapping_stops_the_one_that_ends_first_wins(void **state)
{
    (void)state;
    const char *stops[] = {"abcd", "bc", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "xabcd", "xa", 1);
    expect_text(&st, &k, "xa");
    stopper_fini(&st);
}

static void test_stop_that_is_a_prefix_of_another_wins(void **state)
{
    (void)state;
    const char *stops[] = {"abc", "ab", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "x", "x", 0);
    expect_feed(&st, &k, "a", "", 0);
    expect_feed(&st, &k, "bc", "", 1);
    expect_text(&st, &k, "x");
    stopper_fini(&st);
}

static void test_stops_ending_together_the_longer_wins(void **state)
{
    (void)state;
    const char *stops[] = {"bc", "abc", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "xab", "x", 0);
    expect_feed(&st, &k, "c", "", 1);
    expect_text(&st, &k, "x");
    stopper_fini(&st);
}

static void test_hold_back_is_the_longest_live_prefix_of_any_stop(void **state)
{
    (void)state;
    const char *stops[] = {"xyz", "yw", NULL};
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "axy", "a", 0); // "xy" may become xyz
    expect_feed(&st, &k, "q", "xyq", 0);
    expect_feed(&st, &k, "y", "", 0); // "y" may become yw
    expect_flush(&st, &k, "y");
    expect_text(&st, &k, "axyqy");
    stopper_fini(&st);
}

/* ---- UTF-8 ---- */

static void test_utf8_stop_spanning_pieces_holds_the_whole_character(void **state)
{
    (void)state;
    const char *stops[] = {"\xc3\xa9"
                           "a",
                           NULL}; // "éa"
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "x\xc3\xa9", "x", 0); // "é" held whole
    expect_feed(&st, &k, "a", "", 1);
    expect_text(&st, &k, "x");
    stopper_fini(&st);
}

static void test_utf8_character_sharing_a_lead_byte_is_not_held(void **state)
{
    (void)state;
    const char *stops[] = {"\xc3\xa9", NULL}; // "é"
    struct stopper st;
    struct sink k = {0};
    init_stops(&st, stops);
    expect_feed(&st, &k, "\xc3\xa8", "\xc3\xa8", 0); // "è": same lead byte
    expect_feed(&st, &k, "b\xc3\xa9!", "b", 1);
    expect_text(&st, &k,
                "\xc3\xa8"
                "b");
    stopper_fini(&st);
}

static void test_invalid_stop_strings_are_refused(void **state)
{
    (void)state;
    struct stopper st;
    const char *empty[] = {"ok", ""};
    const char *bad[] = {"\xa9x"}; // starts with a continuation byte
    const char *cut[] = {"a\xc3"}; // ends inside a character
    size_t lens2[] = {2, 0}, lens1[] = {2};
    assert_int_equal(stopper_init(&st, empty, lens2, 2), STOPPER_ERR_INVALID);
    stopper_fini(&st);
    assert_int_equal(stopper_init(&st, bad, lens1, 1), STOPPER_ERR_INVALID);
    stopper_fini(&st);
    assert_int_equal(stopper_init(&st, cut, lens1, 1), STOPPER_ERR_INVALID);
    stopper_fini(&st);
}

/* ---- randomised against a whole-text reference ---- */

static uint64_t rnd_state = 0x853c49e6748fea9bULL;

static uint32_t rnd(void)
{
    rnd_state = rnd_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(rnd_state >> 33);
}

/* Characters the random texts and stops are made of: few, so that partial
 * and overlapping matches are common, and multi-byte ones sharing bytes. */
static const char *const ALPHABET[] = {"a", "b", "\xc3\xa9", "\xc3\xa8", "\xe2\x82\xac"};
#define N_ALPHA 5

/* Append n random characters to s (NUL-terminated). */
static void rand_chars(char *s, int n)
{
    for (int i = 0; i < n; i++)
        strcat(s, ALPHABET[rnd() % N_ALPHA]);
}

/* Where the output ends for the whole text: before the stop that ends first
 * (ties: the one that starts first), or len when none occurs. */
static size_t ref_cut(const char *t, size_t len, char stops[][64], int n)
{
    for (size_t end = 1; end <= len; end++) {
        size_t best = 0;
        for (int i = 0; i < n; i++) {
            size_t l = strlen(stops[i]);
            if (l <= end && memcmp(t + end - l, stops[i], l) == 0 && l > best)
                best = l;
        }
        if (best)
            return end - best;
    }
    return len;
}

/* How much of t[0..len) may be emitted: all but the longest suffix that is a
 * proper prefix of a stop. */
static size_t ref_emittable(const char *t, size_t len, char stops[][64], int n)
{
    for (size_t p = 0; p < len; p++) {
        for (int i = 0; i < n; i++) {
            size_t l = strlen(stops[i]);
            if (len - p < l && memcmp(t + p, stops[i], len - p) == 0)
                return p;
        }
    }
    return len;
}

static int is_continuation(char c)
{
    return ((unsigned char)c & 0xc0) == 0x80;
}

static void test_random_pieces_give_the_whole_text_result_and_hold_minimally(void **state)
{
    (void)state;
    for (int round = 0; round < 3000; round++) {
        char stops[4][64] = {{0}};
        const char *sp[4];
        size_t lens[4];
        int n = 1 + (int)(rnd() % 3);
        for (int i = 0; i < n; i++) {
            rand_chars(stops[i], 1 + (int)(rnd() % 4));
            sp[i] = stops[i];
            lens[i] = strlen(stops[i]);
        }
        char text[256] = "";
        int n_chars = (int)(rnd() % 24);
        // the characters one by one, so that pieces are whole characters
        size_t bounds[64];
        bounds[0] = 0;
        for (int c = 0; c < n_chars; c++) {
            rand_chars(text, 1);
            bounds[c + 1] = strlen(text);
        }
        size_t len = strlen(text), want = ref_cut(text, len, stops, n);

        struct stopper st;
        struct sink k = {0};
        assert_int_equal(stopper_init(&st, sp, lens, n), 0);
        int c = 0, stopped = 0;
        while (c < n_chars && !stopped) {
            int take = 1 + (int)(rnd() % 4);
            if (c + take > n_chars)
                take = n_chars - c;
            const char *e;
            size_t elen;
            size_t from = bounds[c], to = bounds[c + take];
            assert_int_equal(stopper_feed(&st, text + from, to - from, &e, &elen, &stopped), 0);
            // every emit is whole characters
            assert_true(jsonscan_utf8_valid(e, elen));
            sink_add(&k, e, elen);
            assert_false(k.len < len && is_continuation(text[k.len]));
            if (!stopped) // held back: exactly what could still become a stop
                assert_int_equal(k.len, ref_emittable(text, to, stops, n));
            c += take;
        }
        if (!stopped) {
            const char *e;
            size_t elen;
            stopper_flush(&st, &e, &elen);
            sink_add(&k, e, elen);
        }
        assert_int_equal(stopped, want < len);
        if (k.len != want || memcmp(k.buf, text, want) != 0)
            fail_msg("round %d: emitted \"%.*s\", expected \"%.*s\"", round, (int)k.len, k.buf,
                     (int)want, text);
        size_t tlen;
        const char *t = stopper_text(&st, &tlen);
        assert_int_equal(tlen, k.len);
        assert_memory_equal(t, k.buf, tlen);
        stopper_fini(&st);
    }
}

/* ---- efficiency ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A 256-byte stop that keeps almost matching: 1 MiB of "a" fed a byte at a
 * time against a^255 b. Every feed holds back exactly 255 bytes; a matcher
 * that rescanned its held text would do 255 compares a byte (O(len * stop)),
 * KMP does O(1). */
static void test_long_stop_over_long_output_holds_255_bytes_and_stops(void **state)
{
    (void)state;
    char stop[256];
    memset(stop, 'a', 255);
    stop[255] = 'b';
    const char *sp[] = {stop};
    size_t lens[] = {256};
    const size_t n = 1 << 20;
    struct stopper st;
    assert_int_equal(stopper_init(&st, sp, lens, 1), 0);
    const char *e;
    size_t elen, total = 0;
    int stopped;
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(stopper_feed(&st, "a", 1, &e, &elen, &stopped), 0);
        total += elen;
        if (i >= 255 && elen != 1)
            fail_msg("feed %zu emitted %zu bytes", i, elen);
    }
    assert_int_equal(total, n - 255);
    assert_int_equal(stopper_feed(&st, "b", 1, &e, &elen, &stopped), 0);
    assert_int_equal(stopped, 1);
    assert_int_equal(elen, 0);
    size_t tlen;
    stopper_text(&st, &tlen);
    assert_int_equal(tlen, n - 255);
    double dt = now_s() - t0;
    printf("   stopper: %zu one-byte feeds against a 256-byte stop: %.1f ns a feed\n", n,
           dt / (double)n * 1e9);
    stopper_fini(&st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_inside_one_piece_emits_only_what_precedes_it),
        cmocka_unit_test(test_stop_split_over_two_pieces),
        cmocka_unit_test(test_stop_split_over_three_pieces),
        cmocka_unit_test(test_stop_at_the_very_start_emits_nothing),
        cmocka_unit_test(test_text_before_a_stop_in_a_later_piece_is_fully_emitted),
        cmocka_unit_test(test_feed_after_a_stop_takes_and_emits_nothing),
        cmocka_unit_test(test_nothing_is_held_back_when_no_stop_prefix_matches),
        cmocka_unit_test(test_held_back_part_is_released_by_flush),
        cmocka_unit_test(test_feed_after_flush_does_not_match_across_it),
        cmocka_unit_test(test_partial_match_that_breaks_is_released_at_once),
        cmocka_unit_test(test_repeated_partial_match_holds_only_the_live_part),
        cmocka_unit_test(test_self_overlapping_stop_is_found_after_a_false_start),
        cmocka_unit_test(test_empty_stop_list_emits_everything_at_once),
        cmocka_unit_test(test_overlapping_stops_the_one_that_ends_first_wins),
        cmocka_unit_test(test_stop_that_is_a_prefix_of_another_wins),
        cmocka_unit_test(test_stops_ending_together_the_longer_wins),
        cmocka_unit_test(test_hold_back_is_the_longest_live_prefix_of_any_stop),
        cmocka_unit_test(test_utf8_stop_spanning_pieces_holds_the_whole_character),
        cmocka_unit_test(test_utf8_character_sharing_a_lead_byte_is_not_held),
        cmocka_unit_test(test_invalid_stop_strings_are_refused),
        cmocka_unit_test(test_random_pieces_give_the_whole_text_result_and_hold_minimally),
        cmocka_unit_test(test_long_stop_over_long_output_holds_255_bytes_and_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
