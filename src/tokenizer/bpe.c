/*
 * bpe.c: the BPE model of tokenizer.json (models/bpe in Hugging Face `tokenizers`): the vocabulary
 * (string -> id hash map), the merges (pair of ids -> rank and merged id, both serializations),
 * and the merge of one word: characters -> ids (with continuing_subword_prefix / end_of_word_suffix,
 * byte_fallback "<0xXX>" tokens, unk with fuse_unk, ignore_merges), then the lowest-rank adjacent
 * pair is merged first, leftmost on ties, until none is left.
 * Short words use a linear scan over cached pair ranks; long words a binary heap with lazy
 * invalidation (HF's Word::merge_all), so a word of n characters costs O(n log n), never O(n^2).
 * Does not do: dropout (a training-time option; a tokenizer.json with dropout is refused), caching.
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- */
/* hashing */

uint64_t tok_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 32;
    return h;
}

void tok_strmap_init(struct tok_strmap *m, size_t expected)
{
    size_t cap = 16;
    while (cap < expected * 2) cap <<= 1;
    m->mask = (uint32_t)(cap - 1);
    m->slots = loom_malloc(cap * sizeof(int32_t));
    m->hashes = loom_malloc(cap * sizeof(uint32_t));
    memset(m->slots, 0xff, cap * sizeof(int32_t));
}

void tok_strmap_free(struct tok_strmap *m)
{
    free(m->slots);
    free(m->hashes);
    m->slots = NULL;
    m->hashes = NULL;
}

static int32_t strmap_get(const struct tok_strmap *m, const char *const *str, const uint32_t *len, const char *s,
                          size_t n)
{
    if (!m->slots) return -1;
    uint64_t h = tok_hash(s, n);
    uint32_t h32 = (uint32_t)h, i = (uint32_t)(h >> 32) & m->mask;
    for (;;) {
        int32_t id = m->slots[i];
        if (id < 0) return -1;
        if (m->hashes[i] == h32 && len[id] == n && !memcmp(str[id], s, n)) return id;
        i = (i + 1) & m->mask;
    }
}

/* Inserts id (whose string is str[id]); an existing equal key is replaced. */
static void strmap_put(struct tok_strmap *m, const char *const *str, const uint32_t *len, int32_t id)
{
    uint64_t h = tok_hash(str[id], len[id]);
    uint32_t h32 = (uint32_t)h, i = (uint32_t)(h >> 32) & m->mask;
    for (;;) {
        int32_t o = m->slots[i];
        if (o < 0) break;
        if (m->hashes[i] == h32 && len[o] == len[id] && !memcmp(str[o], str[id], len[id])) break;
        i = (i + 1) & m->mask;
    }
    m->slots[i] = id;
    m->hashes[i] = h32;
}

/* Exported for tokenizer.c (added tokens use the same map over their own arrays). */
int32_t tok_strmap_get(const struct tok_strmap *m, const char *const *str, const uint32_t *len, const char *s,
                       size_t n);
void tok_strmap_put(struct tok_strmap *m, const char *const *str, const uint32_t *len, int32_t id);
int32_t tok_strmap_get(const struct tok_strmap *m, const char *const *str, const uint32_t *len, const char *s,
                       size_t n)
{
    return strmap_get(m, str, len, s, n);
}
void tok_strmap_put(struct tok_strmap *m, const char *const *str, const uint32_t *len, int32_t id)
{
    strmap_put(m, str, len, id);
}

int32_t tok_bpe_lookup(const struct tok_bpe *b, const char *s, size_t n)
{
    return strmap_get(&b->map, b->str, b->len, s, n);
}

/* ---------------------------------------------------------------------------------------------- */
/* merges map */

static inline uint32_t merge_hash(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return (uint32_t)k;
}

static inline const struct tok_merge_slot *merge_get(const struct tok_bpe *b, int32_t l, int32_t r)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint32_t i = merge_hash(key) & b->merge_mask;
    for (;;) {
        const struct tok_merge_slot *s = &b->merges[i];
        if (s->key == key) return s;
        if (s->key == UINT64_MAX) return NULL;
        i = (i + 1) & b->merge_mask;
    }
}

static void merge_put(struct tok_bpe *b, int32_t l, int32_t r, uint32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint32_t i = merge_hash(key) & b->merge_mask;
    for (;;) {
        struct tok_merge_slot *s = &b->merges[i];
        if (s->key == key || s->key == UINT64_MAX) {
            s->key = key; /* a repeated pair: the later rank wins, as in HF's HashMap collect */
            s->rank = rank;
            s->new_id = new_id;
            return;
        }
        i = (i + 1) & b->merge_mask;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* loading */

static int add_merge(struct tok_bpe *b, const char *a, size_t al, const char *c, size_t cl, uint32_t rank,
                     struct tok_buf *tmp)
{
    int32_t ia = tok_bpe_lookup(b, a, al), ic = tok_bpe_lookup(b, c, cl);
    if (ia < 0 || ic < 0)
        return loom_fail(LOOM_EINVAL, "tokenizer.json: merge %u ('%.*s' '%.*s'): token '%.*s' is not in the vocab",
                         rank, (int)al, a, (int)cl, c, ia < 0 ? (int)al : (int)cl, ia < 0 ? a : c);
    size_t skip = b->prefix_len <= cl ? b->prefix_len : cl;
    tmp->len = 0;
    tok_buf_put(tmp, a, al);
    tok_buf_put(tmp, c + skip, cl - skip);
    int32_t nid = tok_bpe_lookup(b, tmp->p, tmp->len);
    if (nid < 0)
        return loom_fail(LOOM_EINVAL, "tokenizer.json: merge %u: the merged token '%.*s' is not in the vocab", rank,
                         (int)tmp->len, tmp->p);
    merge_put(b, ia, ic, rank, nid);
    return 0;
}

int tok_bpe_load(struct loom_tokenizer *t, json_t *model)
{
    struct tok_bpe *b = &t->bpe;
    json_t *vocab = json_object_get(model, "vocab");
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return loom_fail(LOOM_EINVAL, "tokenizer.json: model.vocab is missing or not an object");
    if (merges && !json_is_array(merges) && !json_is_null(merges))
        return loom_fail(LOOM_EINVAL, "tokenizer.json: model.merges is not an array");
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0)
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: BPE dropout %g is not supported (set it to null)",
                         json_number_value(dropout));

    /* vocab: ids and one pool for the strings */
    const char *key;
    size_t kl;
    json_t *val;
    size_t pool = 0, count = 0;
    int64_t max_id = -1;
    json_object_keylen_foreach(vocab, key, kl, val)
    {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) > 0x7ffffff0)
            return loom_fail(LOOM_EINVAL, "tokenizer.json: vocab entry '%s' has no valid id", key);
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
        pool += kl + 1;
        count++;
    }
    b->n_ids = (int32_t)(max_id + 1);
    b->str = loom_calloc((size_t)b->n_ids + 1, sizeof(char *));
    b->len = loom_calloc((size_t)b->n_ids + 1, sizeof(uint32_t));
    b->pool = loom_malloc(pool + 1);
    tok_strmap_init(&b->map, count);
    char *p = b->pool;
    json_object_keylen_foreach(vocab, key, kl, val)
    {
        int32_t id = (int32_t)json_integer_value(val);
        memcpy(p, key, kl + 1);
        b->str[id] = p;
        b->len[id] = (uint32_t)kl;
        strmap_put(&b->map, b->str, b->len, id);
        p += kl + 1;
    }

    /* options */
    json_t *j;
    b->unk_id = -1;
    if ((j = json_object_get(model, "unk_token")) && json_is_string(j)) {
        b->unk_id = tok_bpe_lookup(b, json_string_value(j), json_string_length(j));
        if (b->unk_id < 0)
            return loom_fail(LOOM_EINVAL, "tokenizer.json: unk_token '%s' is not in the vocab", json_string_value(j));
    }
    b->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
    b->byte_fallback = json_is_true(json_object_get(model, "byte_fallback"));
    b->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    if ((j = json_object_get(model, "continuing_subword_prefix")) && json_is_string(j) && json_string_length(j)) {
        b->prefix = loom_strndup(json_string_value(j), json_string_length(j));
        b->prefix_len = json_string_length(j);
    }
    if ((j = json_object_get(model, "end_of_word_suffix")) && json_is_string(j) && json_string_length(j)) {
        b->suffix = loom_strndup(json_string_value(j), json_string_length(j));
        b->suffix_len = json_string_length(j);
    }
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof(name), "<0x%02X>", i);
        b->byte_ids[i] = tok_bpe_lookup(b, name, 6);
    }
    for (uint32_t cp = 0; cp < TOK_CHAR_FAST; cp++) {
        char u[4];
        int l = tok_utf8_encode(cp, u);
        b->char_ids[cp] = tok_bpe_lookup(b, u, (size_t)l);
    }

    /* merges */
    size_t nm = merges && json_is_array(merges) ? json_array_size(merges) : 0;
    size_t cap = 16;
    while (cap < nm * 2 + 2) cap <<= 1;
    b->merges = loom_malloc(cap * sizeof(*b->merges));
    for (size_t i = 0; i < cap; i++) b->merges[i].key = UINT64_MAX;
    b->merge_mask = (uint32_t)(cap - 1);
    struct tok_buf tmp = {0};
    uint32_t rank = 0;
    int rc = 0;
    for (size_t i = 0; i < nm && !rc; i++) {
        json_t *m = json_array_get(merges, i);
        if (json_is_string(m)) {
            const char *s = json_string_value(m);
            size_t sl = json_string_length(m);
            if (sl >= 8 && !memcmp(s, "#version", 8)) continue;
            const char *sp = memchr(s, ' ', sl);
            if (!sp || memchr(sp + 1, ' ', sl - (size_t)(sp + 1 - s))) {
                rc = loom_fail(LOOM_EINVAL, "tokenizer.json: merge %zu '%.*s' is not two tokens separated by a space",
                               i, (int)sl, s);
                break;
            }
            rc = add_merge(b, s, (size_t)(sp - s), sp + 1, sl - (size_t)(sp + 1 - s), rank, &tmp);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            json_t *x = json_array_get(m, 0), *y = json_array_get(m, 1);
            rc = add_merge(b, json_string_value(x), json_string_length(x), json_string_value(y),
                           json_string_length(y), rank, &tmp);
        } else {
            rc = loom_fail(LOOM_EINVAL, "tokenizer.json: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
        rank++;
    }
    b->n_merges = rank;
    tok_buf_free(&tmp);
    return rc;
}

void tok_bpe_free(struct tok_bpe *b)
{
    free(b->str);
    free(b->len);
    free(b->pool);
    tok_strmap_free(&b->map);
    free(b->merges);
    free(b->prefix);
    free(b->suffix);
}

/* ---------------------------------------------------------------------------------------------- */
/* one word */

static inline void sym_add(struct tok_enc *e, int *ns, int32_t id, uint32_t len)
{
    struct tok_bpe_sym *s = &e->sym[*ns];
    s->id = id;
    s->len = len;
    s->prev = *ns - 1;
    s->next = -1;
    if (*ns > 0) e->sym[*ns - 1].next = *ns;
    (*ns)++;
}

static inline uint32_t pair_rank(const struct tok_bpe *b, const struct tok_bpe_sym *sym, int i)
{
    if (sym[i].next < 0) return UINT32_MAX;
    const struct tok_merge_slot *m = merge_get(b, sym[i].id, sym[sym[i].next].id);
    return m ? m->rank : UINT32_MAX;
}

static inline void merge_at(const struct tok_bpe *b, struct tok_bpe_sym *sym, int i)
{
    int j = sym[i].next;
    const struct tok_merge_slot *m = merge_get(b, sym[i].id, sym[j].id);
    sym[i].id = m->new_id;
    sym[i].len += sym[j].len;
    sym[j].len = 0;
    sym[i].next = sym[j].next;
    if (sym[j].next >= 0) sym[sym[j].next].prev = i;
}

/* Words of up to this many symbols use the quadratic-but-tiny scan. */
#define SHORT_WORD 48

static void merge_short(struct tok_enc *e, int ns)
{
    const struct tok_bpe *b = &e->t->bpe;
    struct tok_bpe_sym *sym = e->sym;
    uint32_t *rank = e->rank;
    for (int i = 0; i < ns; i++) rank[i] = pair_rank(b, sym, i);
    for (;;) {
        uint32_t best = UINT32_MAX;
        int bi = -1;
        for (int i = 0; i >= 0; i = sym[i].next)
            if (rank[i] < best) {
                best = rank[i];
                bi = i;
            }
        if (bi < 0) break;
        merge_at(b, sym, bi);
        rank[bi] = pair_rank(b, sym, bi);
        if (sym[bi].prev >= 0) rank[sym[bi].prev] = pair_rank(b, sym, sym[bi].prev);
    }
}

/* binary min-heap of (rank << 32 | position) */
static inline void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) >> 1;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static inline uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (m) h[i] = v;
    return top;
}

static void merge_long(struct tok_enc *e, int ns)
{
    const struct tok_bpe *b = &e->t->bpe;
    struct tok_bpe_sym *sym = e->sym;
    size_t need = (size_t)ns * 3 + 4; /* initial pairs + at most 2 pushes per merge */
    if (e->heap_cap < need) {
        free(e->heap);
        e->heap_cap = need;
        e->heap = loom_malloc(need * sizeof(uint64_t));
    }
    uint64_t *h = e->heap;
    size_t hn = 0;
    for (int i = 0; i + 1 < ns; i++) {
        uint32_t r = pair_rank(b, sym, i);
        if (r != UINT32_MAX) heap_push(h, &hn, ((uint64_t)r << 32) | (uint32_t)i);
    }
    while (hn) {
        uint64_t top = heap_pop(h, &hn);
        uint32_t r = (uint32_t)(top >> 32);
        int i = (int)(uint32_t)top;
        if (sym[i].len == 0 || sym[i].next < 0) continue;
        /* a stale entry: the pair at i changed since it was pushed (ranks identify pairs) */
        if (pair_rank(b, sym, i) != r) continue;
        merge_at(b, sym, i);
        if (sym[i].prev >= 0) {
            uint32_t pr = pair_rank(b, sym, sym[i].prev);
            if (pr != UINT32_MAX) heap_push(h, &hn, ((uint64_t)pr << 32) | (uint32_t)sym[i].prev);
        }
        uint32_t nr = pair_rank(b, sym, i);
        if (nr != UINT32_MAX) heap_push(h, &hn, ((uint64_t)nr << 32) | (uint32_t)i);
    }
}

int tok_bpe_word(struct tok_enc *e, const char *s, size_t n)
{
    const struct tok_bpe *b = &e->t->bpe;
    if (n == 0) return 0;
    if (b->ignore_merges) {
        int32_t id = tok_bpe_lookup(b, s, n);
        if (id >= 0) {
            tok_enc_push(e, id);
            return 0;
        }
    }
    /* at most one symbol per byte (byte fallback), plus the prefix/suffix bytes */
    size_t need = n * (1 + b->prefix_len) + b->suffix_len + 1;
    if (need > 0x7fffffff) return loom_fail(LOOM_ETOOLONG, "a word of %zu bytes is too long to tokenize", n);
    if (e->sym_cap < need) {
        free(e->sym);
        free(e->rank);
        e->sym_cap = need;
        e->sym = loom_malloc(need * sizeof(*e->sym));
        e->rank = loom_malloc(need * sizeof(uint32_t));
    }
    int ns = 0;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    bool plain = !b->prefix && !b->suffix;
    size_t i = 0;
    while (i < n) {
        int cl;
        uint32_t cp = tok_utf8_decode((const uint8_t *)s + i, &cl);
        bool first = i == 0, last = i + (size_t)cl >= n;
        const char *cs = s + i;
        size_t csl = (size_t)cl;
        int32_t id;
        if (plain && cp < TOK_CHAR_FAST) {
            id = b->char_ids[cp];
        } else if (plain) {
            id = tok_bpe_lookup(b, cs, csl);
        } else {
            e->word.len = 0;
            if (!first && b->prefix) tok_buf_put(&e->word, b->prefix, b->prefix_len);
            tok_buf_put(&e->word, cs, csl);
            if (last && b->suffix) tok_buf_put(&e->word, b->suffix, b->suffix_len);
            cs = e->word.p;
            csl = e->word.len;
            id = tok_bpe_lookup(b, cs, csl);
        }
        if (id >= 0) {
            if (unk >= 0) {
                sym_add(e, &ns, unk, unk_len);
                unk = -1;
            }
            sym_add(e, &ns, id, (uint32_t)cl);
        } else {
            bool done = false;
            if (b->byte_fallback) {
                bool all = true;
                for (size_t k = 0; k < csl && all; k++) all = b->byte_ids[(uint8_t)cs[k]] >= 0;
                if (all) {
                    if ((size_t)ns + csl > e->sym_cap) LOOM_DIE("BPE symbol buffer overflow");
                    for (size_t k = 0; k < csl; k++) sym_add(e, &ns, b->byte_ids[(uint8_t)cs[k]], 1);
                    done = true;
                }
            }
            if (!done && b->unk_id >= 0) {
                if (unk >= 0 && b->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk >= 0) sym_add(e, &ns, unk, unk_len);
                    unk = b->unk_id;
                    unk_len = (uint32_t)cl;
                }
            }
            /* neither: the character is dropped, as HF does */
        }
        i += (size_t)cl;
    }
    if (unk >= 0) sym_add(e, &ns, unk, unk_len);
    if (ns == 0) return 0;
    if (ns > 1) {
        if (ns <= SHORT_WORD) merge_short(e, ns);
        else merge_long(e, ns);
    }
    for (int k = 0; k >= 0; k = e->sym[k].next) tok_enc_push(e, e->sym[k].id);
    return 0;
}
