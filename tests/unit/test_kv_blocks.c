/* test_kv_blocks.c: the KV block pool: reference counts, eviction order (LRU for cached blocks,
 * uncached ones first), the prefix-cache index with token comparison, and a random stress run against
 * a shadow model of the pool. */
#include "engine/kv_blocks.h"
#include "loom.h"
#include "test.h"

#include <stdint.h>

static uint64_t rng = 88172645463325252ULL;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void test_basic(void)
{
    struct loom_kv_blocks kv;
    CHECK_EQ_INT(loom_kv_blocks_init(&kv, 0, 16, true), LOOM_EINVAL);
    CHECK_EQ_INT(loom_kv_blocks_init(&kv, 4, 0, true), LOOM_EINVAL);
    CHECK_EQ_INT(loom_kv_blocks_init(&kv, 4, 2, false), 0);
    int32_t a = loom_kv_alloc(&kv), b = loom_kv_alloc(&kv), c = loom_kv_alloc(&kv), d = loom_kv_alloc(&kv);
    CHECK(a >= 0 && b >= 0 && c >= 0 && d >= 0 && a != b && b != c && c != d && a != d);
    CHECK_EQ_INT(loom_kv_alloc(&kv), -1);
    CHECK_EQ_INT(kv.num_free, 0);
    loom_kv_release(&kv, b);
    CHECK_EQ_INT(kv.num_free, 1);
    CHECK_EQ_INT(loom_kv_alloc(&kv), b);
    /* no prefix cache: lookups miss, inserts refuse */
    int32_t t[2] = {1, 2};
    struct loom_block_hash h = loom_block_hash_next(NULL, t, 2);
    CHECK(!loom_kv_cache_insert(&kv, a, h, t));
    CHECK_EQ_INT(loom_kv_lookup(&kv, h, t), -1);
    loom_kv_release(&kv, a);
    loom_kv_release(&kv, b);
    loom_kv_release(&kv, c);
    loom_kv_release(&kv, d);
    CHECK_EQ_INT(kv.num_free, 4);
    loom_kv_blocks_check(&kv);
    loom_kv_blocks_free(&kv);
}

static void test_hash(void)
{
    int32_t x[4] = {1, 2, 3, 4}, y[4] = {1, 2, 3, 5}, z[4] = {0, 0, 0, 0};
    struct loom_block_hash hx = loom_block_hash_next(NULL, x, 4), hx2 = loom_block_hash_next(NULL, x, 4);
    struct loom_block_hash hy = loom_block_hash_next(NULL, y, 4);
    CHECK(hx.lo == hx2.lo && hx.hi == hx2.hi);
    CHECK(hx.lo != hy.lo && hx.hi != hy.hi);
    /* chaining: the same block after different prefixes hashes differently */
    struct loom_block_hash a = loom_block_hash_next(&hx, z, 4), b = loom_block_hash_next(&hy, z, 4);
    CHECK(a.lo != b.lo && a.hi != b.hi);
    /* odd lengths and the token count matter */
    struct loom_block_hash o3 = loom_block_hash_next(NULL, x, 3), o2 = loom_block_hash_next(NULL, x, 2);
    CHECK(o3.lo != o2.lo && o3.lo != hx.lo);
    /* no collisions among many small blocks (both lanes) */
    enum { N = 20000 };
    static uint64_t los[N], his[N];
    for (int i = 0; i < N; i++) {
        int32_t t[2] = {i % 200, i / 200};
        struct loom_block_hash h = loom_block_hash_next(NULL, t, 2);
        los[i] = h.lo;
        his[i] = h.hi;
    }
    int coll = 0;
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) coll += los[i] == los[j] || his[i] == his[j];
    CHECK_EQ_INT(coll, 0);
}

static void test_prefix_cache(void)
{
    struct loom_kv_blocks kv;
    CHECK_EQ_INT(loom_kv_blocks_init(&kv, 4, 2, true), 0);
    int32_t t0[2] = {7, 8}, t1[2] = {9, 10}, t2[2] = {11, 12};
    struct loom_block_hash h0 = loom_block_hash_next(NULL, t0, 2), h1 = loom_block_hash_next(&h0, t1, 2);
    struct loom_block_hash h2 = loom_block_hash_next(&h1, t2, 2);
    int32_t a = loom_kv_alloc(&kv), b = loom_kv_alloc(&kv), c = loom_kv_alloc(&kv);
    CHECK(loom_kv_cache_insert(&kv, a, h0, t0));
    CHECK(loom_kv_cache_insert(&kv, b, h1, t1));
    CHECK(!loom_kv_cache_insert(&kv, a, h0, t0)); /* already cached */
    CHECK(!loom_kv_cache_insert(&kv, c, h0, t0)); /* the hash is taken by a */
    CHECK_EQ_INT(kv.num_cached, 2);
    CHECK_EQ_INT(loom_kv_lookup(&kv, h0, t0), a);
    CHECK_EQ_INT(loom_kv_lookup(&kv, h1, t1), b);
    CHECK_EQ_INT(loom_kv_lookup(&kv, h2, t2), -1);
    /* same hash, other tokens (a forged collision): no hit */
    CHECK_EQ_INT(loom_kv_lookup(&kv, h0, t1), -1);

    /* release a prefix the way a sequence does (last block first): uncached c goes to the head,
     * the cached ones to the tail in release order */
    loom_kv_release(&kv, c);
    loom_kv_release(&kv, b);
    loom_kv_release(&kv, a);
    CHECK_EQ_INT(kv.num_free, 4);
    CHECK_EQ_INT(kv.num_cached, 2);
    loom_kv_blocks_check(&kv);
    /* a cache hit on a free block revives it: it leaves the free queue */
    CHECK_EQ_INT(loom_kv_lookup(&kv, h0, t0), a);
    loom_kv_ref(&kv, a);
    CHECK_EQ_INT(kv.num_free, 3);
    CHECK_EQ_INT(kv.ref_cnt[a], 1);
    loom_kv_ref(&kv, a); /* a second sequence shares it */
    CHECK_EQ_INT(kv.ref_cnt[a], 2);
    loom_kv_release(&kv, a);
    CHECK_EQ_INT(kv.num_free, 3);
    loom_kv_release(&kv, a);
    CHECK_EQ_INT(kv.num_free, 4);
    /* eviction order: the two uncached blocks first (c, then the never-used one), then b, then a
     * (b was released before a, so it is older) */
    int32_t order[4];
    for (int i = 0; i < 4; i++) order[i] = loom_kv_alloc(&kv);
    CHECK_EQ_INT(order[0], c);
    CHECK(order[1] != a && order[1] != b && order[1] != c);
    CHECK_EQ_INT(order[2], b);
    CHECK_EQ_INT(order[3], a);
    CHECK_EQ_INT(kv.num_cached, 0); /* allocation evicted both */
    CHECK_EQ_INT(kv.num_evictions, 2);
    CHECK_EQ_INT(loom_kv_lookup(&kv, h0, t0), -1);
    loom_kv_blocks_check(&kv);
    loom_kv_blocks_free(&kv);
}

/* Random alloc / ref / release / insert / lookup against a shadow of the reference counts. */
static void test_stress(void)
{
    enum { NB = 64, BS = 4, OPS = 200000 };
    struct loom_kv_blocks kv;
    CHECK_EQ_INT(loom_kv_blocks_init(&kv, NB, BS, true), 0);
    int refs[NB] = {0};
    int32_t held[4 * NB];
    int n_held = 0;
    int bad = 0;
    for (int op = 0; op < OPS; op++) {
        int what = rnd(10);
        if (what < 4) {
            int32_t id = loom_kv_alloc(&kv);
            int free_shadow = 0;
            for (int i = 0; i < NB; i++) free_shadow += refs[i] == 0;
            if (id < 0) {
                bad += free_shadow != 0;
            } else {
                bad += refs[id] != 0;
                refs[id] = 1;
                held[n_held++] = id;
            }
        } else if (what < 7 && n_held) {
            int i = rnd(n_held);
            int32_t id = held[i];
            held[i] = held[--n_held];
            loom_kv_release(&kv, id);
            refs[id]--;
        } else if (what < 8 && n_held && n_held < 4 * NB) {
            int32_t id = held[rnd(n_held)];
            loom_kv_ref(&kv, id);
            refs[id]++;
            held[n_held++] = id;
        } else if (what < 9 && n_held) {
            /* cache a held block under tokens derived from a small space, so lookups collide on purpose */
            int32_t id = held[rnd(n_held)];
            int32_t t[BS];
            for (int k = 0; k < BS; k++) t[k] = (int32_t)rnd(3);
            loom_kv_cache_insert(&kv, id, loom_block_hash_next(NULL, t, BS), t);
        } else {
            int32_t t[BS];
            for (int k = 0; k < BS; k++) t[k] = (int32_t)rnd(3);
            int32_t id = loom_kv_lookup(&kv, loom_block_hash_next(NULL, t, BS), t);
            if (id >= 0) {
                bad += memcmp(kv.tokens + id * BS, t, sizeof(t)) != 0;
                loom_kv_ref(&kv, id);
                refs[id]++;
                held[n_held++] = id;
                if (n_held >= 4 * NB) {
                    loom_kv_release(&kv, held[--n_held]);
                    refs[held[n_held]]--;
                }
            }
        }
        if (op % 997 == 0) {
            loom_kv_blocks_check(&kv);
            for (int i = 0; i < NB; i++) bad += refs[i] != kv.ref_cnt[i];
        }
    }
    CHECK_EQ_INT(bad, 0);
    while (n_held) {
        int32_t id = held[--n_held];
        loom_kv_release(&kv, id);
        refs[id]--;
    }
    CHECK_EQ_INT(kv.num_free, NB);
    for (int i = 0; i < NB; i++) CHECK_EQ_INT(kv.ref_cnt[i], 0);
    loom_kv_blocks_check(&kv);
    loom_kv_blocks_free(&kv);
}

int main(void)
{
    test_basic();
    test_hash();
    test_prefix_cache();
    test_stress();
    return test_report();
}
