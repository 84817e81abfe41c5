/*
 * attention: one query token against a paged KV cache held in fp16.
 *
 * Layout: the cache of a sequence is a list of blocks of block_size
 * positions; block b holds positions [b*block_size, (b+1)*block_size), each
 * position one row of n_kv_heads*head_dim fp16 values, K and V in separate
 * blocks. The caller decides which positions a query sees (causality,
 * sliding window) and passes them as first_pos..last_pos inclusive.
 *
 * Key decisions: grouped-query attention reads each K and V row once per
 * token for all the query heads that use it (n_heads/n_kv_heads per KV
 * head), converting fp16 to f32 as it loads. The AVX2 path walks the
 * positions once, in chunks, with an online softmax (running max and sum,
 * as flash attention does); the scalar reference takes two passes with a
 * max-subtracted softmax. Scores and sums are f32: q is not rounded to fp16
 * (llama.cpp rounds q, and with flash attention accumulates V in fp16; the
 * difference is within its own fp16 noise). Threading: kc_attention and
 * kc_attention_kv run on the calling thread; kc_attention_batch spreads
 * (token, KV-head range) work items over a pool, taken one at a time from an
 * atomic counter because causal prefill makes later tokens costlier.
 */
#pragma once

#include <stdint.h>

struct kc_pool;

/* Convert one token's K (or V) row of n = n_kv_heads*head_dim values to
 * fp16 (round to nearest even) into its cache row. */
void kc_kv_store(uint16_t *row, const float *x, int n);

/*
 * out (n_heads, head_dim) = softmax(scale * q . K[first..last]) V[first..last]
 * per query head; query head h reads KV head h / (n_heads / n_kv_heads).
 * q (n_heads, head_dim); k_blocks/v_blocks: the sequence's block table,
 * entries for blocks first_pos/block_size..last_pos/block_size used; scratch
 * at least (n_heads/n_kv_heads) * (last_pos - first_pos + 1) floats (the
 * scalar path's scores; the AVX2 path needs none). n_heads <= 256. Requires
 * 0 <= first_pos <= last_pos and n_heads % n_kv_heads == 0. All borrowed;
 * out must not overlap q or scratch. Thread-safe with separate out/scratch.
 */
void kc_attention(float *out, const float *q, const uint16_t *const *k_blocks,
                  const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                  int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch);

/* The same for the query heads of KV head kv only (they are written in out,
 * the rest of out is untouched). Results are bit-identical to kc_attention's
 * for those heads. */
void kc_attention_kv(float *out, const float *q, const uint16_t *const *k_blocks,
                     const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                     int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch,
                     int kv);

/* The scalar reference (also the fallback), same contract as kc_attention. */
void kc_attention_ref(float *out, const float *q, const uint16_t *const *k_blocks,
                      const uint16_t *const *v_blocks, int block_size, int first_pos, int last_pos,
                      int n_heads, int n_kv_heads, int head_dim, float scale, float *scratch);

/* One query token of a batch. */
struct kc_attn_token {
    float *out;                      /* (n_heads, head_dim) */
    const float *q;                  /* (n_heads, head_dim) */
    const uint16_t *const *k_blocks; /* its sequence's block table */
    const uint16_t *const *v_blocks;
    int first_pos, last_pos; /* inclusive */
};

/*
 * kc_attention for n_tokens tokens on the pool's threads, bit-identical to
 * calling it for each token. Tokens are cut into KV-head ranges only when
 * there are fewer tokens than threads. scratch: at least kc_pool_threads(p)
 * * (n_heads/n_kv_heads) * max_span floats, where max_span >= last_pos -
 * first_pos + 1 of every token. All borrowed.
 */
void kc_attention_batch(struct kc_pool *p, const struct kc_attn_token *tokens, int n_tokens,
                        int block_size, int n_heads, int n_kv_heads, int head_dim, float scale,
                        float *scratch, int max_span);
