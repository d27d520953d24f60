/*
 * tokenizer.h: a model's tokenizer.json (+ tokenizer_config.json), exactly as Hugging Face
 * `tokenizers` runs it: normalizer, pre-tokenizer, BPE model (byte-level or SentencePiece-style with
 * byte fallback), post-processor, decoder, and added/special tokens matched before the model.
 * Also an incremental detokenizer for streaming that never emits a partial UTF-8 character.
 */
#ifndef LOOM_TOKENIZER_H
#define LOOM_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loom_tokenizer;

/* dir holds tokenizer.json; tokenizer_config.json is optional (special tokens, chat template). */
int loom_tokenizer_load(const char *dir, struct loom_tokenizer **out);
/* From memory: tokenizer.json text and the optional tokenizer_config.json text (NULL). */
int loom_tokenizer_load_json(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                             struct loom_tokenizer **out);
void loom_tokenizer_free(struct loom_tokenizer *t);

/* Text -> ids (caller frees *ids). add_special_tokens runs the post-processor (e.g. BOS).
 * Invalid UTF-8 is LOOM_EINVAL. */
int loom_tokenizer_encode(const struct loom_tokenizer *t, const char *text, size_t len, bool add_special_tokens,
                          int32_t **ids, int *n_ids);
/* Ids -> text (caller frees *text, NUL-terminated). An id out of range is LOOM_EINVAL. */
int loom_tokenizer_decode(const struct loom_tokenizer *t, const int32_t *ids, int n_ids, bool skip_special_tokens,
                          char **text, size_t *len);

int loom_tokenizer_vocab_size(const struct loom_tokenizer *t); /* largest id + 1, added tokens included */
const char *loom_tokenizer_id_to_token(const struct loom_tokenizer *t, int32_t id); /* NULL if none */
int32_t loom_tokenizer_token_to_id(const struct loom_tokenizer *t, const char *token); /* -1 if none */
bool loom_tokenizer_is_special(const struct loom_tokenizer *t, int32_t id);
/* From tokenizer_config.json (bos_token / eos_token), -1 if absent; and their strings (NULL if absent). */
int32_t loom_tokenizer_bos_id(const struct loom_tokenizer *t);
int32_t loom_tokenizer_eos_id(const struct loom_tokenizer *t);
const char *loom_tokenizer_bos_token(const struct loom_tokenizer *t);
const char *loom_tokenizer_eos_token(const struct loom_tokenizer *t);
/* The raw tokenizer_config.json text, or NULL (the chat template module reads it). */
const char *loom_tokenizer_config_json(const struct loom_tokenizer *t);

/*
 * Incremental detokenizer: feed generated ids one at a time; each push returns the text that is now
 * final: whole UTF-8 characters, never part of one. Joined deltas, with loom_detok_flush's at the end,
 * equal loom_tokenizer_decode of all pushed ids (the text after the prompt's, with a prompt), byte for
 * byte. Prompt ids give the decoder its left context (e.g. SentencePiece's leading-space rule).
 * Each push decodes a window of a few ids: O(1) per token. Not thread-safe per object (one per sequence).
 */
struct loom_detok {
    const struct loom_tokenizer *tok;
    bool skip_special_tokens;
    int32_t *ids; /* context + generated ids (less those decode drops: skipped special tokens) */
    int n_ids, cap_ids;
    int prefix_offset, read_offset; /* vLLM's scheme: text of ids[prefix..read) is already emitted */
    char *pending;                  /* text decoded but held back (it ends in U+FFFD: maybe an incomplete character) */
    size_t pending_len;
    char *out;                      /* the last delta (owned, NUL-terminated) */
    size_t out_cap;
    void *scratch;                  /* private: decode buffers reused from push to push */
    char *pre;                      /* private: text of ids[prefix..n) emitted so far (that of ids[prefix..read)
                                     * plus whole characters emitted while a later one was incomplete) */
    size_t pre_len, pre_cap;
    bool pre_valid;
    int stall;                      /* private: pushes since the text last grew while it ends in U+FFFD */
};
void loom_detok_init(struct loom_detok *d, const struct loom_tokenizer *t, bool skip_special_tokens,
                     const int32_t *prompt_ids, int n_prompt);
/* Appends id; *delta (owned by d, valid until the next call) gets the new final text. An id out of
 * range is LOOM_EINVAL and is not appended. */
int loom_detok_push(struct loom_detok *d, int32_t id, const char **delta, size_t *delta_len);
/* At the end of a sequence: the text still held back (e.g. U+FFFD for bytes of a character the
 * sequence never completed), so that the joined deltas equal the full decode. */
int loom_detok_flush(struct loom_detok *d, const char **delta, size_t *delta_len);
void loom_detok_free(struct loom_detok *d);

#endif
