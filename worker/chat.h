/*
 * chat: the Mistral instruct template. Turns a request's messages (see
 * common/job.h) into the prompt's token ids, and into the text that the
 * response shows as its prompt.
 *
 * What it follows: Mistral's own tokenizer library, mistral-common, which
 * Mistral calls the ground truth (its cookbook, concept-deep-dive/
 * tokenization/chat_templates.md, spells the rules out with token ids).
 * Mistral-7B-Instruct v0.1 and v0.2 (and Mixtral-8x7B-Instruct) use its
 * tokenizer V1, whose vocabulary is the plain 32000-piece SentencePiece one;
 * it encodes a chat part by part, each part with SentencePiece's leading
 * space, and puts the control tokens in as ids:
 *
 *   BOS + encode("[INST] u1 [/INST]") + encode("a1") + EOS
 *       + encode("[INST] u2 [/INST]")
 *
 * - BOS once, first; each user turn is the text "[INST] {content} [/INST]";
 *   each assistant turn its content followed by EOS; the result ends with
 *   the last user turn's "[/INST]", so the model answers next.
 * - A system message (only first, see job.h) goes before the first user
 *   turn's content, followed by "\n\n", as mistral-common does for V1
 *   (tokenizers V2/V3, Mistral-7B-Instruct v0.3, put it before the last user
 *   turn instead; millrace keeps the first-turn rule for every vocabulary).
 * - Each text part is encoded with tok_encode() without BOS; the tokenizer's
 *   add_space_prefix gives it SentencePiece's leading "▁" (an empty part
 *   encodes to nothing).
 * - Where the vocabulary has pieces "[INST]" and "[/INST]" of type CONTROL or
 *   USER_DEFINED (tokenizer V3's extended vocabulary, Mistral-7B v0.3: ids 3
 *   and 4), they go in as those ids and only the contents are encoded:
 *   [INST] + encode(u1) + [/INST] + encode(a1) + EOS + ...
 *
 * The text (chat_render) is the string that, tokenized as llama.cpp does with
 * special tokens parsed (a control token's text becomes its id, and the text
 * after it gets the leading space), gives exactly these ids:
 * "<s>[INST] u1 [/INST] a1</s>[INST] u2 [/INST]" (V1), or
 * "<s>[INST]u1[/INST]a1</s>[INST]u2[/INST]" with control [INST] pieces.
 * Mistral's cookbook writes the V1 form as "<s> [INST] u1 [/INST] a1</s>
 * [INST] ..." with the SentencePiece spaces shown; llama.cpp would read that
 * string with one space too many after each control token.
 *
 * Thread-safe: the tokenizer is only read.
 */
#pragma once

#include <stddef.h>

struct tokenizer;
struct job_message;

#define CHAT_ERR_INVALID (-1) /* no messages, or the last one is not from the user */
#define CHAT_ERR_NOMEM   (-2)

/*
 * The token ids of messages[0..n) (borrowed) for tokenizer t (borrowed).
 * *ids: new (free()), *n_ids of them. Returns 0, CHAT_ERR_INVALID or
 * CHAT_ERR_NOMEM; *ids is NULL on failure.
 */
int chat_encode(const struct tokenizer *t, const struct job_message *messages, size_t n, int **ids,
                size_t *n_ids);

/*
 * The template as text (see above) for messages[0..n) (borrowed) and t
 * (borrowed): *text new (free()), NUL-terminated, *len bytes. Returns 0,
 * CHAT_ERR_INVALID or CHAT_ERR_NOMEM; *text is NULL on failure.
 */
int chat_render(const struct tokenizer *t, const struct job_message *messages, size_t n,
                char **text, size_t *len);
