/*
 * tok_internal.h: the tokenizer's internal structures, shared by tokenizer.c (loading, the encode
 * pipeline), normalize.c, pretok.c, bpe.c, decode.c and detok.c. Nothing here is public API.
 *
 * Encoding follows Hugging Face `tokenizers` step by step:
 *   added tokens (not normalized) split the raw text -> each remaining piece is normalized ->
 *   added tokens (normalized) split it again -> pre-tokenizer steps split it into words ->
 *   the BPE model turns each word into ids -> the post-processor adds special tokens.
 * No offsets/alignments are tracked: only what the ids and the decoded text depend on.
 */
#ifndef LOOM_TOK_INTERNAL_H
#define LOOM_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/utf8.h"
#include "tokenizer/tokenizer.h"

/* ---- small growable byte buffer ---- */
struct tok_buf {
    char *p;
    size_t len, cap;
};
void tok_buf_reserve(struct tok_buf *b, size_t extra);
void tok_buf_put(struct tok_buf *b, const void *s, size_t n);
static inline void tok_buf_putc(struct tok_buf *b, char c)
{
    if (b->len + 1 > b->cap) tok_buf_reserve(b, 1);
    b->p[b->len++] = c;
}
void tok_buf_free(struct tok_buf *b);

/* ---- UTF-8 helpers (encode, strict decode and validation: core/utf8.h) ---- */
/* Decodes the (already validated) character at s, sets *len. */
uint32_t tok_utf8_decode(const uint8_t *s, int *len);
/* Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD. Appends to out. */
void tok_utf8_lossy(const uint8_t *s, size_t n, struct tok_buf *out);
/* Rust char::is_whitespace (the Unicode White_Space property). */
bool tok_is_whitespace(uint32_t cp);

/* ---- string -> id hash map over strings owned elsewhere (id -> string arrays) ---- */
struct tok_strmap {
    uint32_t mask; /* capacity - 1 (power of two) */
    struct {
        const char *p; /* the key (owned elsewhere) */
        uint32_t len;
        uint32_t h;    /* low bits of the key's hash */
        int32_t id;    /* -1 if empty */
    } *slots;
};
uint64_t tok_hash(const void *s, size_t n);
void tok_strmap_init(struct tok_strmap *m, size_t expected);
void tok_strmap_free(struct tok_strmap *m);

/* ---- regex (pcre2, JIT) or literal pattern ---- */
struct tok_pattern {
    pcre2_code *re; /* NULL for a literal */
    bool jit;       /* re was JIT-compiled */
    char *lit;      /* literal text (String patterns) */
    size_t lit_len;
};
/* json: {"String": "..."} or {"Regex": "..."}; what names the component for messages. */
int tok_pattern_from_json(json_t *j, const char *what, struct tok_pattern *p);
int tok_pattern_compile_regex(const char *src, size_t len, const char *what, struct tok_pattern *p);
void tok_pattern_free(struct tok_pattern *p);
/* memmem, linear also under sanitizers */
const char *tok_memmem(const char *h, size_t hn, const char *needle, size_t nn);
/* Per-thread matching state: match data, and a large JIT stack made on first need. */
struct tok_matcher {
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
};
void tok_matcher_free(struct tok_matcher *m);
/* Finds the first match in s[from..n) (s is valid UTF-8, from on a character boundary): returns 1
 * with [*ms, *me), 0 if none, or a negative status when matching fails (resource limits). */
int tok_pattern_find(const struct tok_pattern *p, struct tok_matcher *m, const char *s, size_t n, size_t from,
                     size_t *ms, size_t *me);
/* Every match of p in s, as HF's Pattern::find_matches: spans covering s, each flagged match or not
 * (empty matches included, an empty match right after the previous match skipped). */
struct tok_spanvec;
int tok_pattern_spans(const struct tok_pattern *p, struct tok_matcher *m, const char *s, size_t n,
                      struct tok_spanvec *out);
/* Replaces every match of p in s with rep (literally), appending to out. */
int tok_pattern_replace(const struct tok_pattern *p, struct tok_matcher *m, const char *s, size_t n, const char *rep,
                        size_t rep_len, struct tok_buf *out);

/* ---- fast parsing of model.vocab and model.merges (tok_json.c) ---- */
struct tok_json_sections {
    char *rest;       /* the document with both values emptied (caller frees) */
    size_t rest_len;
    const char *vocab, *vocab_end, *merges, *merges_end; /* the values, in the original text */
};
/* 0, or -1 when the document is not as expected (then parse all of it with jansson). */
int tok_json_split(const char *js, size_t n, struct tok_json_sections *out);
/* Call fn for each entry; 0, or -1 on anything unexpected (fall back to jansson). */
int tok_json_vocab(const struct tok_json_sections *j, int (*fn)(void *ctx, const char *s, size_t n, int64_t id),
                   void *ctx);
/* Call fn for each merge (a string "a b": b empty and is_pair 0); 0, -1 as above, -2 if fn failed. */
int tok_json_merges(const struct tok_json_sections *j,
                    int (*fn)(void *ctx, const char *a, size_t al, const char *b, size_t bl, int is_pair),
                    void *ctx);
#define TOK_FALLBACK 1 /* a status of the loaders: redo with jansson */

/* ---- normalizers ---- */
enum tok_norm_type {
    TN_NFC, TN_NFD, TN_NFKC, TN_NFKD, TN_LOWERCASE, TN_STRIP, TN_STRIP_ACCENTS, TN_REPLACE, TN_PREPEND,
    TN_APPEND, TN_BYTELEVEL,
};
struct tok_norm {
    enum tok_norm_type type;
    struct tok_pattern pat; /* Replace */
    char *str;              /* Replace content, Prepend/Append text */
    size_t str_len;
    bool left, right; /* Strip */
};

/* ---- pre-tokenizers ---- */
enum tok_split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };
enum tok_pretok_type {
    TP_SPLIT, TP_BYTELEVEL, TP_METASPACE, TP_DIGITS, TP_WHITESPACE, TP_WHITESPACE_SPLIT, TP_PUNCTUATION,
    TP_CHAR_DELIM, TP_BERT,
};
enum tok_prepend_scheme { PS_ALWAYS, PS_FIRST, PS_NEVER };
struct tok_pretok {
    enum tok_pretok_type type;
    struct tok_pattern pat;      /* Split, Whitespace, ByteLevel (use_regex) */
    enum tok_split_behavior behavior;
    bool invert;                 /* Split */
    bool add_prefix_space;       /* ByteLevel */
    bool use_regex;              /* ByteLevel */
    uint32_t replacement;        /* Metaspace: the replacement character; CharDelimiterSplit: delimiter */
    char rep_utf8[4];
    int rep_len;
    enum tok_prepend_scheme prepend_scheme; /* Metaspace */
    bool split;                  /* Metaspace */
    bool individual_digits;      /* Digits */
};

/* ---- BPE model ---- */
struct tok_merge_slot {
    uint64_t key; /* (left id << 32) | right id; UINT64_MAX = empty */
    uint32_t rank;
    int32_t new_id;
};
#define TOK_CHAR_FAST 0x800 /* characters below this have a direct char -> id table */
struct tok_bpe {
    int32_t n_ids;             /* largest model id + 1 */
    const char **str;          /* [n_ids] token text (into pool), NULL for holes */
    uint32_t *len;             /* [n_ids] */
    char *pool;
    struct tok_strmap map;     /* token text -> id */
    struct tok_merge_slot *merges;
    uint32_t merge_mask;
    size_t n_merges;
    int32_t unk_id;            /* -1 if none */
    bool fuse_unk, byte_fallback, ignore_merges;
    char *prefix, *suffix;     /* continuing_subword_prefix, end_of_word_suffix (NULL if none/empty) */
    size_t prefix_len, suffix_len;
    int32_t byte_ids[256];     /* "<0xXX>" ids for byte fallback, -1 if absent */
    int32_t char_ids[TOK_CHAR_FAST]; /* id of the single-character token, -1 if absent (no prefix/suffix) */
    /* [n_ids] whether BPE of the token's own text gives back just that token: 0 not known yet,
     * 1 yes (a word equal to it is emitted without merging), 2 no. Filled lazily, race-free (relaxed
     * atomics: every thread would store the same value). */
    _Atomic uint8_t *whole;
};

/* ---- added tokens ---- */
struct tok_added {
    char *content;
    size_t len;
    int32_t id;
    bool special, normalized, lstrip, rstrip, single_word;
};
/* A byte trie for leftmost-longest matching (what aho-corasick's LeftmostLongest gives). */
struct tok_trie {
    int32_t *child;   /* hash (node, byte) -> child node: open addressing over keys */
    uint32_t *keys;   /* (node << 8 | byte) + 1, 0 = empty */
    uint32_t mask;
    int32_t *term;    /* [n_nodes] added-token index ending here, or -1 */
    int n_nodes;
    bool first[256];  /* bytes that start some pattern */
    bool any;
};

/* ---- post-processor: a sequence of ops over the id list ---- */
struct tok_post_item {
    bool is_seq;   /* the sequence itself ("A") */
    int32_t *ids;  /* special token ids */
    int n_ids;
};
struct tok_post {
    struct tok_post_item *items;
    int n_items;
};

/* ---- decoders ---- */
enum tok_dec_type {
    TD_BYTELEVEL, TD_REPLACE, TD_BYTE_FALLBACK, TD_FUSE, TD_STRIP, TD_METASPACE, TD_BPE, TD_WORDPIECE,
};
struct tok_dec {
    enum tok_dec_type type;
    struct tok_pattern pat; /* Replace */
    char *str;              /* Replace content; BPEDecoder suffix; WordPiece prefix */
    size_t str_len;
    uint32_t ch;            /* Strip content, Metaspace replacement */
    int start, stop;        /* Strip */
    bool prepend_first;     /* Metaspace: prepend_scheme != never */
    bool cleanup;           /* WordPiece */
};

struct loom_tokenizer {
    struct tok_bpe bpe;
    struct tok_added *added;
    int n_added;
    int32_t *added_by_id; /* [vocab_size] index into added, or -1 */
    struct tok_strmap added_map; /* content -> index into added (ids as indices) */
    const char **added_str;      /* [n_added] content pointers for added_map */
    uint32_t *added_len;
    struct tok_trie trie_raw, trie_norm;
    char **norm_content; /* [n_added] normalized content (for the normalized trie), NULL if not */
    size_t *norm_len;
    int32_t vocab_size;

    struct tok_norm *norms;
    int n_norms;
    struct tok_pretok *pretoks;
    int n_pretoks;
    struct tok_post *posts;
    int n_posts;
    struct tok_dec *decs;
    int n_decs;
    bool has_decoder;

    uint8_t byte_of_char[0x144]; /* ByteLevel: code point -> byte (valid if is_byte_char) */
    bool is_byte_char[0x144];
    char byte_char[256][3];      /* ByteLevel: byte -> its UTF-8 character */
    uint8_t byte_char_len[256];

    int32_t bos_id, eos_id;
    char *bos_token, *eos_token;
    char *config_json;
};

/* ---- encode context (one per encode call) ---- */
#define TOK_MAX_DEPTH 16
struct tok_span {
    uint32_t start, end;
    bool match;
};
struct tok_spanvec {
    struct tok_span *v;
    size_t n, cap;
};
void tok_spanvec_grow(struct tok_spanvec *sv);
void tok_spanvec_free(struct tok_spanvec *sv);
static inline void tok_span_push(struct tok_spanvec *sv, uint32_t start, uint32_t end, bool match)
{
    if (sv->n == sv->cap) tok_spanvec_grow(sv);
    sv->v[sv->n].start = start;
    sv->v[sv->n].end = end;
    sv->v[sv->n].match = match;
    sv->n++;
}
struct tok_bpe_sym {
    int32_t id;      /* -1 = merged into the symbol on its left */
    int32_t prev, next;
    uint32_t rank;   /* rank of the pair (this, next), UINT32_MAX if none */
    int32_t new_id;  /* the id that pair merges into */
};
/* Long words: the pairs waiting to merge, grouped by rank (see bpe.c's merge_long). */
struct tok_rank_queue {
    int32_t *bucket_of;  /* [n_merges] bucket index + 1 for a rank, 0 = none */
    struct { uint32_t rank, off, len, cap; } *buckets; /* positions: arena[off .. off + len) */
    size_t n_buckets, cap_buckets;
    int32_t *arena;      /* the buckets' position arrays (a full one moves to a doubled block) */
    size_t n_arena, cap_arena;
    uint32_t *heap;      /* binary min-heap of ranks that have a bucket */
    size_t n_heap, cap_heap;
    int32_t *tmp;        /* the positions of the rank being merged */
    size_t cap_tmp;
};
struct tok_enc {
    const struct loom_tokenizer *t;
    int32_t *ids;
    size_t n_ids, cap_ids;
    struct tok_matcher m;
    struct tok_buf lvl_a[TOK_MAX_DEPTH], lvl_b[TOK_MAX_DEPTH];
    struct tok_spanvec spans[TOK_MAX_DEPTH], spans2[TOK_MAX_DEPTH];
    struct tok_buf nb[3]; /* normalizer scratch */
    struct tok_buf word;  /* BPE scratch */
    struct tok_bpe_sym *sym;
    size_t sym_cap;
    uint64_t *heap; /* binary heap (fallback for merges that are not in training order) */
    size_t heap_cap;
    struct tok_rank_queue rq;
    /* word -> ids cache of this call (direct-mapped; on after the first few hundred words) */
    struct tok_wcache_slot {
        uint64_t h;
        uint32_t word_off, ids_off;
        uint16_t word_len, n_ids; /* word_len 0 = empty slot */
    } *wc;
    struct tok_buf wc_words;
    int32_t *wc_ids;
    size_t wc_n_ids, wc_cap_ids;
    size_t n_words;
};
void tok_enc_push(struct tok_enc *e, int32_t id);

/* normalize.c */
int tok_norm_load(struct loom_tokenizer *t, json_t *j);
/* Runs the normalizers over s; *out points to s itself or to one of e->nb. */
int tok_normalize(struct tok_enc *e, const char *s, size_t n, const char **out, size_t *out_len);
void tok_norm_free(struct tok_norm *n);

/* pretok.c */
int tok_pretok_load(struct loom_tokenizer *t, json_t *j);
/* Pre-tokenizes s and runs the model on every word, appending ids to e. */
int tok_pretok_run(struct tok_enc *e, const char *s, size_t n, bool at_start);
void tok_pretok_free(struct tok_pretok *p);
void tok_bytelevel_init(struct loom_tokenizer *t);

/* bpe.c */
/* model: the model object; fast: its vocab and merges from tok_json_split (NULL: from model itself). */
int tok_bpe_load(struct loom_tokenizer *t, json_t *model, const struct tok_json_sections *fast);
void tok_bpe_free(struct tok_bpe *b);
int32_t tok_bpe_lookup(const struct tok_bpe *b, const char *s, size_t n);
/* BPE over one word; appends ids. */
int tok_bpe_word(struct tok_enc *e, const char *s, size_t n);
int tok_bpe_word_nocache(struct tok_enc *e, const char *s, size_t n);
/* The per-call word cache: get pushes the ids of key and returns true, or returns false with the
 * key's hash for put; put stores the ids pushed since first_id under key. */
bool tok_cache_get(struct tok_enc *e, const char *key, size_t n, uint64_t *hash);
void tok_cache_put(struct tok_enc *e, const char *key, size_t n, uint64_t h, size_t first_id);

/* decode.c */
int tok_dec_load(struct loom_tokenizer *t, json_t *j);
void tok_dec_free(struct tok_dec *d);
/* Decoding with reusable scratch: *text points into ctx (valid until its next use). */
struct tok_dec_ctx;
struct tok_dec_ctx *tok_dec_ctx_new(void);
void tok_dec_ctx_free(struct tok_dec_ctx *c);
int tok_decode_ctx(const struct loom_tokenizer *t, struct tok_dec_ctx *c, const int32_t *ids, int n_ids,
                   bool skip_special_tokens, const char **text, size_t *len);

#endif
