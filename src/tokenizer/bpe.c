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

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- */
/* hashing */

uint64_t tok_hash(const void *p, size_t n)
{
    /* fixed-size loads only (a variable-length copy of the tail into a local stalls the load that
     * follows it); the tail is read as overlapping words */
    const uint8_t *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull), v;
    if (n >= 8) {
        size_t len = n;
        while (len > 8) {
            memcpy(&v, s, 8);
            h = (h ^ v) * 0xff51afd7ed558ccdull;
            h ^= h >> 32;
            s += 8;
            len -= 8;
        }
        memcpy(&v, (const uint8_t *)p + n - 8, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        v = ((uint64_t)a << 32) | b;
    } else if (n > 0) {
        v = ((uint64_t)s[0] << 16) | ((uint64_t)s[n >> 1] << 8) | s[n - 1];
    } else {
        v = 0;
    }
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
    m->slots = loom_malloc(cap * sizeof(*m->slots));
    for (size_t i = 0; i < cap; i++) m->slots[i].id = -1;
}

void tok_strmap_free(struct tok_strmap *m)
{
    free(m->slots);
    m->slots = NULL;
}

static int32_t strmap_get_h(const struct tok_strmap *m, const char *s, size_t n, uint64_t h)
{
    if (!m->slots) return -1;
    uint32_t h32 = (uint32_t)h, i = (uint32_t)(h >> 32) & m->mask;
    for (;;) {
        int32_t id = m->slots[i].id;
        if (id < 0) return -1;
        if (m->slots[i].h == h32 && m->slots[i].len == n && !memcmp(m->slots[i].p, s, n)) return id;
        i = (i + 1) & m->mask;
    }
}

static int32_t strmap_get(const struct tok_strmap *m, const char *const *str, const uint32_t *len, const char *s,
                          size_t n)
{
    (void)str;
    (void)len;
    return strmap_get_h(m, s, n, tok_hash(s, n));
}

/* Inserts id (whose string is str[id]); an existing equal key is replaced. */
static void strmap_put(struct tok_strmap *m, const char *const *str, const uint32_t *len, int32_t id)
{
    uint64_t h = tok_hash(str[id], len[id]);
    uint32_t h32 = (uint32_t)h, i = (uint32_t)(h >> 32) & m->mask;
    for (;;) {
        int32_t o = m->slots[i].id;
        if (o < 0) break;
        if (m->slots[i].h == h32 && len[o] == len[id] && !memcmp(str[o], str[id], len[id])) break;
        i = (i + 1) & m->mask;
    }
    m->slots[i].id = id;
    m->slots[i].h = h32;
    m->slots[i].p = str[id];
    m->slots[i].len = len[id];
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

static void merges_grow(struct tok_bpe *b)
{
    size_t old_cap = b->merges ? (size_t)b->merge_mask + 1 : 0, cap = old_cap ? old_cap * 2 : 1024;
    struct tok_merge_slot *old = b->merges;
    b->merges = loom_malloc(cap * sizeof(*b->merges));
    for (size_t i = 0; i < cap; i++) b->merges[i].key = UINT64_MAX;
    b->merge_mask = (uint32_t)(cap - 1);
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].key != UINT64_MAX)
            merge_put(b, (int32_t)(old[i].key >> 32), (int32_t)(uint32_t)old[i].key, old[i].rank, old[i].new_id);
    free(old);
}

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
    if ((b->n_merges + 1) * 2 > (size_t)b->merge_mask + 1) merges_grow(b);
    merge_put(b, ia, ic, rank, nid);
    b->n_merges++;
    return 0;
}

/* the vocab, collected from either parser, then turned into the id arrays and the hash map */
struct vocab_acc {
    struct tok_buf pool;
    struct {
        size_t off;
        uint32_t len;
        int32_t id;
    } *e;
    size_t n, cap;
    int64_t max_id;
};

static int vocab_add(void *ctx, const char *s, size_t n, int64_t id)
{
    struct vocab_acc *v = ctx;
    if (id < 0 || id > 0x7ffffff0 || n > 0xffffffffu) return -1;
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4096;
        v->e = loom_realloc(v->e, v->cap * sizeof(*v->e));
    }
    v->e[v->n].off = v->pool.len;
    v->e[v->n].len = (uint32_t)n;
    v->e[v->n].id = (int32_t)id;
    v->n++;
    tok_buf_put(&v->pool, s, n);
    tok_buf_putc(&v->pool, 0);
    if (id > v->max_id) v->max_id = id;
    return 0;
}

static void vocab_build(struct tok_bpe *b, struct vocab_acc *v)
{
    b->n_ids = (int32_t)(v->max_id + 1);
    b->whole = loom_calloc((size_t)b->n_ids + 1, sizeof(*b->whole));
    b->str = loom_calloc((size_t)b->n_ids + 1, sizeof(char *));
    b->len = loom_calloc((size_t)b->n_ids + 1, sizeof(uint32_t));
    b->pool = v->pool.p ? v->pool.p : loom_malloc(1);
    v->pool.p = NULL;
    tok_strmap_init(&b->map, v->n);
    for (size_t i = 0; i < v->n; i++) {
        int32_t id = v->e[i].id;
        b->str[id] = b->pool + v->e[i].off;
        b->len[id] = v->e[i].len;
        strmap_put(&b->map, b->str, b->len, id);
    }
    free(v->e);
    v->e = NULL;
}

struct merge_ctx {
    struct tok_bpe *b;
    struct tok_buf tmp;
    uint32_t rank;
    size_t index;
};

static int merge_add(void *ctx, const char *a, size_t al, const char *c, size_t cl, int is_pair)
{
    struct merge_ctx *m = ctx;
    size_t idx = m->index++;
    if (is_pair) return add_merge(m->b, a, al, c, cl, m->rank++, &m->tmp) ? -1 : 0;
    /* the "a b" form: lines starting with #version are skipped (they take no rank) */
    if (al >= 8 && !memcmp(a, "#version", 8)) return 0;
    const char *sp = memchr(a, ' ', al);
    if (!sp || memchr(sp + 1, ' ', al - (size_t)(sp + 1 - a))) {
        loom_fail(LOOM_EINVAL, "tokenizer.json: merge %zu '%.*s' is not two tokens separated by a space", idx, (int)al,
                  a);
        return -1;
    }
    return add_merge(m->b, a, (size_t)(sp - a), sp + 1, al - (size_t)(sp + 1 - a), m->rank++, &m->tmp) ? -1 : 0;
}

int tok_bpe_load(struct loom_tokenizer *t, json_t *model, const struct tok_json_sections *fast)
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

    /* vocab */
    struct vocab_acc acc;
    memset(&acc, 0, sizeof(acc));
    acc.max_id = -1;
    if (fast) {
        if (tok_json_vocab(fast, vocab_add, &acc)) {
            tok_buf_free(&acc.pool);
            free(acc.e);
            return TOK_FALLBACK;
        }
    } else {
        const char *key;
        size_t kl;
        json_t *val;
        json_object_keylen_foreach(vocab, key, kl, val)
        {
            if (!json_is_integer(val) || vocab_add(&acc, key, kl, json_integer_value(val))) {
                tok_buf_free(&acc.pool);
                free(acc.e);
                return loom_fail(LOOM_EINVAL, "tokenizer.json: vocab entry '%s' has no valid id", key);
            }
        }
    }
    vocab_build(b, &acc);

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
        int l = loom_utf8_encode(cp, u);
        b->char_ids[cp] = tok_bpe_lookup(b, u, (size_t)l);
    }

    /* merges */
    merges_grow(b);
    struct merge_ctx mc = {.b = b};
    int rc = 0;
    if (fast) {
        rc = tok_json_merges(fast, merge_add, &mc);
        if (rc == -1) rc = TOK_FALLBACK;
        else if (rc) rc = LOOM_EINVAL;
    } else if (merges && json_is_array(merges)) {
        size_t i;
        json_t *m;
        json_array_foreach(merges, i, m)
        {
            if (json_is_string(m)) {
                if (merge_add(&mc, json_string_value(m), json_string_length(m), "", 0, 0)) rc = LOOM_EINVAL;
            } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                       json_is_string(json_array_get(m, 1))) {
                json_t *x = json_array_get(m, 0), *y = json_array_get(m, 1);
                if (merge_add(&mc, json_string_value(x), json_string_length(x), json_string_value(y),
                              json_string_length(y), 1))
                    rc = LOOM_EINVAL;
            } else {
                rc = loom_fail(LOOM_EINVAL, "tokenizer.json: merge %zu is neither \"a b\" nor [\"a\", \"b\"]", i);
            }
            if (rc) break;
        }
    }
    tok_buf_free(&mc.tmp);
    return rc;
}

void tok_bpe_free(struct tok_bpe *b)
{
    free(b->str);
    free(b->len);
    free(b->pool);
    tok_strmap_free(&b->map);
    free(b->merges);
    free((void *)b->whole);
    free(b->prefix);
    free(b->suffix);
}

/* ---------------------------------------------------------------------------------------------- */
/* one word */

static inline void sym_add(struct tok_enc *e, int *ns, int32_t id)
{
    if ((size_t)*ns == e->sym_cap) {
        e->sym_cap *= 2;
        e->sym = loom_realloc(e->sym, e->sym_cap * sizeof(*e->sym));
    }
    struct tok_bpe_sym *s = &e->sym[*ns];
    s->id = id;
    s->prev = *ns - 1;
    s->next = -1;
    s->rank = UINT32_MAX;
    if (*ns > 0) e->sym[*ns - 1].next = *ns;
    (*ns)++;
}

/* Caches in sym[i] the rank and result of the pair (i, next(i)). */
static inline void set_pair(const struct tok_bpe *b, struct tok_bpe_sym *sym, int i)
{
    const struct tok_merge_slot *m = sym[i].next >= 0 ? merge_get(b, sym[i].id, sym[sym[i].next].id) : NULL;
    sym[i].rank = m ? m->rank : UINT32_MAX;
    sym[i].new_id = m ? m->new_id : -1;
}

/* Merges the pair (i, next(i)); updates the cached pairs of i and of its previous symbol. */
static inline void merge_at(const struct tok_bpe *b, struct tok_bpe_sym *sym, int i)
{
    int j = sym[i].next;
    sym[i].id = sym[i].new_id;
    sym[j].id = -1;
    sym[i].next = sym[j].next;
    if (sym[j].next >= 0) sym[sym[j].next].prev = i;
    set_pair(b, sym, i);
    if (sym[i].prev >= 0) set_pair(b, sym, sym[i].prev);
}

/* Words of up to this many symbols use a linear scan for the best pair (cheapest for short words). */
#define SHORT_WORD 32

static void merge_short(struct tok_enc *e)
{
    const struct tok_bpe *b = &e->t->bpe;
    struct tok_bpe_sym *sym = e->sym;
    for (;;) {
        uint32_t best = UINT32_MAX;
        int bi = -1;
        for (int i = 0; i >= 0; i = sym[i].next)
            if (sym[i].rank < best) {
                best = sym[i].rank;
                bi = i;
            }
        if (bi < 0) break;
        merge_at(b, sym, bi);
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

/* HF's Word::merge_all with a binary heap of (rank, position), starting from the current pairs. */
static void merge_heap(struct tok_enc *e, int ns)
{
    const struct tok_bpe *b = &e->t->bpe;
    struct tok_bpe_sym *sym = e->sym;
    size_t need = (size_t)ns + 16;
    if (e->heap_cap < need) {
        free(e->heap);
        e->heap_cap = need;
        e->heap = loom_malloc(need * sizeof(uint64_t));
    }
    size_t hn = 0;
    for (int i = 0; i >= 0; i = sym[i].next)
        if (sym[i].rank != UINT32_MAX) heap_push(e->heap, &hn, ((uint64_t)sym[i].rank << 32) | (uint32_t)i);
    while (hn) {
        uint64_t top = heap_pop(e->heap, &hn);
        uint32_t rk = (uint32_t)(top >> 32);
        int i = (int)(uint32_t)top;
        /* stale: merged away, or the pair at i changed since (a rank names one pair) */
        if (sym[i].id < 0 || sym[i].rank != rk) continue;
        merge_at(b, sym, i);
        if (hn + 2 > e->heap_cap) {
            e->heap_cap *= 2;
            e->heap = loom_realloc(e->heap, e->heap_cap * sizeof(uint64_t));
        }
        int p = sym[i].prev;
        if (p >= 0 && sym[p].rank != UINT32_MAX) heap_push(e->heap, &hn, ((uint64_t)sym[p].rank << 32) | (uint32_t)p);
        if (sym[i].rank != UINT32_MAX) heap_push(e->heap, &hn, ((uint64_t)sym[i].rank << 32) | (uint32_t)i);
    }
}

static void rq_heap_push(struct tok_rank_queue *q, uint32_t v)
{
    if (q->n_heap == q->cap_heap) {
        q->cap_heap = q->cap_heap ? q->cap_heap * 2 : 64;
        q->heap = loom_realloc(q->heap, q->cap_heap * sizeof(uint32_t));
    }
    size_t i = q->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) >> 1;
        if (q->heap[p] <= v) break;
        q->heap[i] = q->heap[p];
        i = p;
    }
    q->heap[i] = v;
}

static uint32_t rq_heap_pop(struct tok_rank_queue *q)
{
    uint32_t top = q->heap[0], v = q->heap[--q->n_heap];
    size_t i = 0, m = q->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= m) break;
        if (c + 1 < m && q->heap[c + 1] < q->heap[c]) c++;
        if (q->heap[c] >= v) break;
        q->heap[i] = q->heap[c];
        i = c;
    }
    if (m) q->heap[i] = v;
    return top;
}

static void rq_add(struct tok_rank_queue *q, uint32_t rank, int32_t pos)
{
    int32_t bi = q->bucket_of[rank] - 1;
    if (bi < 0) {
        if (q->n_buckets == q->cap_buckets) {
            q->cap_buckets = q->cap_buckets ? q->cap_buckets * 2 : 64;
            q->buckets = loom_realloc(q->buckets, q->cap_buckets * sizeof(*q->buckets));
        }
        bi = (int32_t)q->n_buckets++;
        q->buckets[bi].rank = rank;
        q->buckets[bi].off = q->buckets[bi].len = q->buckets[bi].cap = 0;
        q->bucket_of[rank] = bi + 1;
        rq_heap_push(q, rank);
    }
    typeof(q->buckets[0]) *bk = &q->buckets[bi];
    if (bk->len == bk->cap) { /* move to a block twice the size at the arena's end */
        uint32_t cap = bk->cap ? bk->cap * 2 : 4;
        if (q->n_arena + cap > q->cap_arena) {
            q->cap_arena = (q->n_arena + cap) * 2;
            q->arena = loom_realloc(q->arena, q->cap_arena * sizeof(int32_t));
        }
        if (bk->len) memcpy(q->arena + q->n_arena, q->arena + bk->off, bk->len * sizeof(int32_t));
        bk->off = (uint32_t)q->n_arena;
        bk->cap = cap;
        q->n_arena += cap;
    }
    q->arena[bk->off + bk->len++] = pos;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Long words. The heap of HF's merge_all pops (rank, position) in increasing order. With merges in
 * training order a merge only creates pairs of a higher rank (the merged token did not exist before
 * its own merge), so all pairs of the lowest rank r are known when r comes up: they are merged left
 * to right, and the new pairs wait in their rank's bucket. That is the heap's order, at O(1) per
 * pair plus one sort per rank. A merges list out of training order (a new pair of rank <= r) falls
 * back to the binary heap from the current state, so results never depend on the order of the list. */
static void merge_long(struct tok_enc *e, int ns)
{
    const struct tok_bpe *b = &e->t->bpe;
    struct tok_bpe_sym *sym = e->sym;
    struct tok_rank_queue *q = &e->rq;
    if (!q->bucket_of) q->bucket_of = loom_calloc(b->n_merges + 1, sizeof(int32_t));
    q->n_buckets = q->n_arena = q->n_heap = 0;
    for (int i = 0; i + 1 < ns; i++)
        if (sym[i].rank != UINT32_MAX) rq_add(q, sym[i].rank, i);
    bool fallback = false;
    while (q->n_heap && !fallback) {
        uint32_t r = rq_heap_pop(q);
        int32_t bi = q->bucket_of[r] - 1;
        /* take the bucket's positions (adding to other buckets may move the arena) */
        size_t k = q->buckets[bi].len;
        if (k > q->cap_tmp) {
            q->cap_tmp = k * 2;
            free(q->tmp);
            q->tmp = loom_malloc(q->cap_tmp * sizeof(int32_t));
        }
        memcpy(q->tmp, q->arena + q->buckets[bi].off, k * sizeof(int32_t));
        q->buckets[bi].len = 0;
        bool sorted = true;
        for (size_t x = 1; x < k && sorted; x++) sorted = q->tmp[x] > q->tmp[x - 1];
        if (!sorted) qsort(q->tmp, k, sizeof(int32_t), cmp_i32);
        for (size_t x = 0; x < k && !fallback; x++) {
            int i = q->tmp[x];
            if (sym[i].id < 0 || sym[i].rank != r) continue; /* stale */
            merge_at(b, sym, i);
            int cand[2] = {sym[i].prev, i};
            for (int c = 0; c < 2; c++) {
                int p = cand[c];
                if (p < 0 || sym[p].rank == UINT32_MAX) continue;
                if (sym[p].rank <= r) {
                    fallback = true;
                    break;
                }
                rq_add(q, sym[p].rank, p);
            }
        }
    }
    for (size_t i = 0; i < q->n_buckets; i++) q->bucket_of[q->buckets[i].rank] = 0;
    if (fallback) merge_heap(e, ns);
}

static int merge_word(struct tok_enc *e, const char *s, size_t n);

#define WC_SLOTS 4096       /* power of two */
#define WC_START 256        /* words before the cache is made */
#define WC_MAX_WORD 64      /* longest word cached, bytes */
#define WC_MAX_IDS 32
#define WC_ARENA (1u << 20) /* bytes of words kept before the cache is cleared */

static int word_uncached(struct tok_enc *e, const char *s, size_t n, uint64_t h);

/* The word cache of one encode call: key (a word, or for byte-level tokenizers the piece before its
 * bytes are mapped: one tokenizer only ever uses one kind of key) -> the ids it gave. */
bool tok_cache_get(struct tok_enc *e, const char *key, size_t n, uint64_t *hash)
{
    uint64_t h = *hash = tok_hash(key, n);
    if (n > WC_MAX_WORD || ++e->n_words < WC_START) return false;
    if (!e->wc) e->wc = loom_calloc(WC_SLOTS, sizeof(*e->wc));
    struct tok_wcache_slot *c = &e->wc[(h >> 40) & (WC_SLOTS - 1)];
    if (c->h != h || c->word_len != n || memcmp(e->wc_words.p + c->word_off, key, n)) return false;
    if (e->n_ids + c->n_ids > e->cap_ids) {
        e->cap_ids = (e->n_ids + c->n_ids) * 2;
        e->ids = loom_realloc(e->ids, e->cap_ids * sizeof(int32_t));
    }
    memcpy(e->ids + e->n_ids, e->wc_ids + c->ids_off, (size_t)c->n_ids * sizeof(int32_t));
    e->n_ids += c->n_ids;
    return true;
}

void tok_cache_put(struct tok_enc *e, const char *key, size_t n, uint64_t h, size_t first_id)
{
    size_t k = e->n_ids - first_id;
    if (!e->wc || n > WC_MAX_WORD || k > WC_MAX_IDS) return;
    struct tok_wcache_slot *c = &e->wc[(h >> 40) & (WC_SLOTS - 1)];
    if (e->wc_words.len + n > WC_ARENA) { /* full: start over */
        memset(e->wc, 0, WC_SLOTS * sizeof(*e->wc));
        e->wc_words.len = 0;
        e->wc_n_ids = 0;
    }
    if (e->wc_n_ids + k > e->wc_cap_ids) {
        e->wc_cap_ids = (e->wc_n_ids + k) * 2 + 1024;
        e->wc_ids = loom_realloc(e->wc_ids, e->wc_cap_ids * sizeof(int32_t));
    }
    c->h = h;
    c->word_off = (uint32_t)e->wc_words.len;
    c->word_len = (uint16_t)n;
    c->ids_off = (uint32_t)e->wc_n_ids;
    c->n_ids = (uint16_t)k;
    tok_buf_put(&e->wc_words, key, n);
    memcpy(e->wc_ids + e->wc_n_ids, e->ids + first_id, k * sizeof(int32_t));
    e->wc_n_ids += k;
}

int tok_bpe_word(struct tok_enc *e, const char *s, size_t n)
{
    if (n == 0) return 0;
    uint64_t h;
    if (tok_cache_get(e, s, n, &h)) return 0;
    size_t before = e->n_ids;
    int rc = word_uncached(e, s, n, h);
    if (!rc) tok_cache_put(e, s, n, h, before);
    return rc;
}

int tok_bpe_word_nocache(struct tok_enc *e, const char *s, size_t n)
{
    if (n == 0) return 0;
    return word_uncached(e, s, n, tok_hash(s, n));
}

static int word_uncached(struct tok_enc *e, const char *s, size_t n, uint64_t h)
{
    const struct tok_bpe *b = &e->t->bpe;
    int32_t id = strmap_get_h(&b->map, s, n, h);
    if (id < 0) return merge_word(e, s, n);
    if (b->ignore_merges) {
        tok_enc_push(e, id);
        return 0;
    }
    /* a word that is a token: most words of a text. Its merge result is fixed, so remember whether
     * it is the token itself. */
    uint8_t st = atomic_load_explicit(&b->whole[id], memory_order_relaxed);
    if (st == 1) {
        tok_enc_push(e, id);
        return 0;
    }
    size_t before = e->n_ids;
    int rc = merge_word(e, s, n);
    if (!rc && st == 0)
        atomic_store_explicit(&b->whole[id], e->n_ids == before + 1 && e->ids[before] == id ? 1 : 2,
                              memory_order_relaxed);
    return rc;
}

static int merge_word(struct tok_enc *e, const char *s, size_t n)
{
    const struct tok_bpe *b = &e->t->bpe;
    /* one symbol per character (byte fallback adds more; sym_add grows the array) */
    if (n > 0x7fffffff) return loom_fail(LOOM_ETOOLONG, "a word of %zu bytes is too long to tokenize", n);
    size_t chars = 0;
    for (size_t k = 0; k < n; k++) chars += ((uint8_t)s[k] & 0xC0) != 0x80;
    if (e->sym_cap < chars + 1) {
        free(e->sym);
        e->sym_cap = chars + 16;
        e->sym = loom_malloc(e->sym_cap * sizeof(*e->sym));
    }
    int ns = 0;
    int32_t unk = -1;
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
                sym_add(e, &ns, unk);
                unk = -1;
            }
            sym_add(e, &ns, id);
        } else {
            bool done = false;
            if (b->byte_fallback) {
                bool all = true;
                for (size_t k = 0; k < csl && all; k++) all = b->byte_ids[(uint8_t)cs[k]] >= 0;
                if (all) {
                    for (size_t k = 0; k < csl; k++) sym_add(e, &ns, b->byte_ids[(uint8_t)cs[k]]);
                    done = true;
                }
            }
            if (!done && b->unk_id >= 0) {
                if (unk < 0 || !b->fuse_unk) { /* fused: the pending unk grows over this character */
                    if (unk >= 0) sym_add(e, &ns, unk);
                    unk = b->unk_id;
                }
            }
            /* neither: the character is dropped, as HF does */
        }
        i += (size_t)cl;
    }
    if (unk >= 0) sym_add(e, &ns, unk);
    if (ns == 0) return 0;
    if (ns > 1) {
        for (int k = 0; k + 1 < ns; k++) set_pair(b, e->sym, k);
        if (ns <= SHORT_WORD) merge_short(e);
        else merge_long(e, ns);
    }
    for (int k = 0; k >= 0; k = e->sym[k].next) tok_enc_push(e, e->sym[k].id);
    return 0;
}
