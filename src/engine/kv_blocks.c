/*
 * kv_blocks.c: the KV block pool: reference counts, the free queue in eviction order, and the
 * prefix-cache index (hash -> block, chained buckets). Pure bookkeeping over int32 ids: it does not
 * know about sequences or the KV tensors, and it allocates only in loom_kv_blocks_init.
 */
#include "engine/kv_blocks.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- */
/* Block hashes: two 64-bit lanes of multiply-xor mixing (wyhash's mum), finished with murmur3's fmix64. */

static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t fmix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

struct loom_block_hash loom_block_hash_next(const struct loom_block_hash *parent, const int32_t *tokens, int n)
{
    uint64_t a = parent ? parent->lo : 0x243f6a8885a308d3ULL;
    uint64_t b = parent ? parent->hi : 0x13198a2e03707344ULL;
    a = mum(a ^ (uint64_t)n, 0xa0761d6478bd642fULL);
    b = mum(b ^ ((uint64_t)n << 32), 0xe7037ed1a0b428dbULL);
    for (int i = 0; i < n; i += 2) {
        uint64_t hi32 = i + 1 < n ? (uint32_t)tokens[i + 1] : 0xffffffffu;
        uint64_t w = (uint64_t)(uint32_t)tokens[i] | hi32 << 32;
        a = mum(a ^ w, 0x8ebc6af09c88c6e3ULL);
        b = mum(b ^ (w << 29 | w >> 35), 0x589965cc75374cc3ULL);
    }
    struct loom_block_hash h = {fmix64(a ^ (b >> 1)), fmix64(b + a * 0x9e3779b97f4a7c15ULL)};
    return h;
}

static inline uint32_t bucket_of(const struct loom_kv_blocks *kv, struct loom_block_hash h)
{
    return (uint32_t)(h.lo ^ (h.hi >> 17)) & kv->bucket_mask;
}

/* ---------------------------------------------------------------------------------------------- */
/* The free queue: head = evicted first. */

static void free_unlink(struct loom_kv_blocks *kv, int32_t id)
{
    int32_t p = kv->prev[id], n = kv->next[id];
    if (p >= 0) kv->next[p] = n;
    else kv->free_head = n;
    if (n >= 0) kv->prev[n] = p;
    else kv->free_tail = p;
    kv->prev[id] = kv->next[id] = -1;
    kv->num_free--;
}

static void free_push_tail(struct loom_kv_blocks *kv, int32_t id)
{
    kv->prev[id] = kv->free_tail;
    kv->next[id] = -1;
    if (kv->free_tail >= 0) kv->next[kv->free_tail] = id;
    else kv->free_head = id;
    kv->free_tail = id;
    kv->num_free++;
}

static void free_push_head(struct loom_kv_blocks *kv, int32_t id)
{
    kv->next[id] = kv->free_head;
    kv->prev[id] = -1;
    if (kv->free_head >= 0) kv->prev[kv->free_head] = id;
    else kv->free_tail = id;
    kv->free_head = id;
    kv->num_free++;
}

/* ---------------------------------------------------------------------------------------------- */

int loom_kv_blocks_init(struct loom_kv_blocks *kv, int num_blocks, int block_size, bool prefix_caching)
{
    memset(kv, 0, sizeof(*kv));
    if (num_blocks < 1) return loom_fail(LOOM_EINVAL, "KV cache: %d blocks; at least 1 is needed", num_blocks);
    if (block_size < 1) return loom_fail(LOOM_EINVAL, "KV cache: block size %d; it must be >= 1", block_size);
    kv->num_blocks = num_blocks;
    kv->block_size = block_size;
    kv->prefix_caching = prefix_caching;
    kv->ref_cnt = loom_calloc((size_t)num_blocks, sizeof(int32_t));
    kv->prev = loom_malloc((size_t)num_blocks * sizeof(int32_t));
    kv->next = loom_malloc((size_t)num_blocks * sizeof(int32_t));
    kv->free_head = kv->free_tail = -1;
    for (int32_t i = 0; i < num_blocks; i++) free_push_tail(kv, i);
    if (prefix_caching) {
        uint32_t nb = 1;
        while (nb < (uint32_t)num_blocks && nb < (1u << 30)) nb <<= 1;
        kv->bucket_mask = nb - 1;
        kv->bucket = loom_malloc((size_t)nb * sizeof(int32_t));
        for (uint32_t i = 0; i < nb; i++) kv->bucket[i] = -1;
        kv->chain = loom_malloc((size_t)num_blocks * sizeof(int32_t));
        kv->cached = loom_calloc((size_t)num_blocks, sizeof(bool));
        kv->hash = loom_calloc((size_t)num_blocks, sizeof(struct loom_block_hash));
        kv->tokens = loom_malloc((size_t)num_blocks * (size_t)block_size * sizeof(int32_t));
    }
    return LOOM_OK;
}

void loom_kv_blocks_free(struct loom_kv_blocks *kv)
{
    free(kv->ref_cnt);
    free(kv->prev);
    free(kv->next);
    free(kv->bucket);
    free(kv->chain);
    free(kv->cached);
    free(kv->hash);
    free(kv->tokens);
    memset(kv, 0, sizeof(*kv));
}

static void cache_remove(struct loom_kv_blocks *kv, int32_t id)
{
    int32_t *link = &kv->bucket[bucket_of(kv, kv->hash[id])];
    while (*link != id) {
        LOOM_ASSERT(*link >= 0);
        link = &kv->chain[*link];
    }
    *link = kv->chain[id];
    kv->cached[id] = false;
    kv->num_cached--;
}

int32_t loom_kv_alloc(struct loom_kv_blocks *kv)
{
    int32_t id = kv->free_head;
    if (id < 0) return -1;
    LOOM_ASSERT(kv->ref_cnt[id] == 0);
    free_unlink(kv, id);
    if (kv->cached && kv->cached[id]) {
        cache_remove(kv, id);
        kv->num_evictions++;
    }
    kv->ref_cnt[id] = 1;
    return id;
}

void loom_kv_ref(struct loom_kv_blocks *kv, int32_t id)
{
    LOOM_ASSERT(id >= 0 && id < kv->num_blocks);
    if (kv->ref_cnt[id] == 0) {
        LOOM_ASSERT(kv->cached && kv->cached[id]); /* only a cached block is worth reviving */
        free_unlink(kv, id);
    }
    kv->ref_cnt[id]++;
}

void loom_kv_release(struct loom_kv_blocks *kv, int32_t id)
{
    LOOM_ASSERT(id >= 0 && id < kv->num_blocks);
    LOOM_ASSERT(kv->ref_cnt[id] > 0);
    if (--kv->ref_cnt[id] > 0) return;
    if (kv->cached && kv->cached[id]) free_push_tail(kv, id);
    else free_push_head(kv, id);
}

int32_t loom_kv_lookup(const struct loom_kv_blocks *kv, struct loom_block_hash h, const int32_t *tokens)
{
    if (!kv->bucket) return -1;
    size_t bytes = (size_t)kv->block_size * sizeof(int32_t);
    for (int32_t id = kv->bucket[bucket_of(kv, h)]; id >= 0; id = kv->chain[id]) {
        if (kv->hash[id].lo == h.lo && kv->hash[id].hi == h.hi &&
            !memcmp(kv->tokens + (size_t)id * kv->block_size, tokens, bytes))
            return id;
    }
    return -1;
}

bool loom_kv_cache_insert(struct loom_kv_blocks *kv, int32_t id, struct loom_block_hash h, const int32_t *tokens)
{
    LOOM_ASSERT(id >= 0 && id < kv->num_blocks && kv->ref_cnt[id] > 0);
    if (!kv->bucket || kv->cached[id]) return false;
    uint32_t b = bucket_of(kv, h);
    for (int32_t o = kv->bucket[b]; o >= 0; o = kv->chain[o])
        if (kv->hash[o].lo == h.lo && kv->hash[o].hi == h.hi) return false;
    kv->hash[id] = h;
    memcpy(kv->tokens + (size_t)id * kv->block_size, tokens, (size_t)kv->block_size * sizeof(int32_t));
    kv->chain[id] = kv->bucket[b];
    kv->bucket[b] = id;
    kv->cached[id] = true;
    kv->num_cached++;
    return true;
}

void loom_kv_blocks_check(const struct loom_kv_blocks *kv)
{
    int n_free = 0, n_zero = 0;
    for (int32_t id = kv->free_head, prev = -1; id >= 0; prev = id, id = kv->next[id]) {
        LOOM_ASSERT(kv->prev[id] == prev);
        LOOM_ASSERT(kv->ref_cnt[id] == 0);
        LOOM_ASSERT(++n_free <= kv->num_blocks);
        if (kv->next[id] < 0) LOOM_ASSERT(kv->free_tail == id);
    }
    for (int i = 0; i < kv->num_blocks; i++) {
        LOOM_ASSERT(kv->ref_cnt[i] >= 0);
        n_zero += kv->ref_cnt[i] == 0;
    }
    LOOM_ASSERT(n_free == kv->num_free && n_zero == kv->num_free);
    if (!kv->bucket) return;
    int n_indexed = 0;
    for (uint32_t b = 0; b <= kv->bucket_mask; b++)
        for (int32_t id = kv->bucket[b]; id >= 0; id = kv->chain[id]) {
            LOOM_ASSERT(kv->cached[id] && bucket_of(kv, kv->hash[id]) == b);
            LOOM_ASSERT(++n_indexed <= kv->num_blocks);
        }
    int n_cached = 0;
    for (int i = 0; i < kv->num_blocks; i++) n_cached += kv->cached[i];
    LOOM_ASSERT(n_indexed == kv->num_cached && n_cached == kv->num_cached);
}
