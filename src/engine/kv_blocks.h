/*
 * kv_blocks.h: the KV cache block pool (vLLM V1's BlockPool / KVCacheManager bookkeeping).
 *
 * The pool is num_blocks fixed-size blocks of block_size tokens, named by int32 ids; this module
 * only counts and never touches the memory the ids name (the model owns the KV tensors). Blocks are
 * reference-counted: a block shared by sequences (n > 1 forks, prefix-cache hits) is freed when the
 * last of them releases it.
 *
 * Prefix caching: a full block can be registered under the hash of its content, chained over the
 * previous block's hash (loom_block_hash_next), so a hash names a whole prefix. The hash is 128
 * bits and the block's token ids are kept and compared on lookup, so a collision cannot hand a
 * request another prompt's KV. A freed block keeps its hash and stays findable until its memory is
 * needed: free blocks form one doubly linked queue, evicted from the head. Released blocks that
 * carry a hash go to the tail (least recently used first out); blocks without one go to the head,
 * since they hold nothing worth keeping. Taking a reference to a free cached block unlinks it in O(1).
 */
#ifndef LOOM_ENGINE_KV_BLOCKS_H
#define LOOM_ENGINE_KV_BLOCKS_H

#include <stdbool.h>
#include <stdint.h>

struct loom_block_hash {
    uint64_t lo, hi;
};

/* The hash of a block whose tokens are tokens[0..n) and whose predecessor hashed to parent
 * (parent = NULL for the first block of a sequence). */
struct loom_block_hash loom_block_hash_next(const struct loom_block_hash *parent, const int32_t *tokens, int n);

struct loom_kv_blocks {
    int num_blocks, block_size;
    bool prefix_caching;
    int32_t *ref_cnt;          /* [num_blocks] sequences holding the block */
    int32_t *prev, *next;      /* [num_blocks] free-queue links, -1 at the ends */
    int32_t free_head, free_tail;
    int num_free;              /* blocks with ref_cnt 0 (cached ones included: they are evictable) */
    /* prefix cache (allocated only with prefix_caching) */
    bool *cached;              /* [num_blocks] block is registered under hash[id] */
    struct loom_block_hash *hash; /* [num_blocks] */
    int32_t *tokens;           /* [num_blocks * block_size] token ids of a cached block */
    int32_t *bucket;           /* [bucket_mask + 1] first block of each hash bucket, -1 = empty */
    int32_t *chain;            /* [num_blocks] next block in the same bucket */
    uint32_t bucket_mask;
    int num_cached;            /* blocks registered in the cache (free or in use) */
    int64_t num_evictions;     /* cached blocks whose memory was reused */
};

/* Sets up a pool with every block free. LOOM_EINVAL if num_blocks < 1 or block_size < 1. */
int loom_kv_blocks_init(struct loom_kv_blocks *kv, int num_blocks, int block_size, bool prefix_caching);
void loom_kv_blocks_free(struct loom_kv_blocks *kv);

/* Takes the least valuable free block (evicting its cache entry), with ref_cnt 1; -1 if none. */
int32_t loom_kv_alloc(struct loom_kv_blocks *kv);
/* One more reference to a block (a cache hit or a fork); a free cached block leaves the free queue. */
void loom_kv_ref(struct loom_kv_blocks *kv, int32_t id);
/* Drops one reference; at zero the block becomes free (and stays cached if it has a hash). */
void loom_kv_release(struct loom_kv_blocks *kv, int32_t id);

/* The cached block holding exactly these block_size tokens under this hash, or -1. */
int32_t loom_kv_lookup(const struct loom_kv_blocks *kv, struct loom_block_hash h, const int32_t *tokens);
/* Registers a full, computed block (which the caller holds) under h. Returns false and changes
 * nothing when the block is already cached or another block holds the same hash. */
bool loom_kv_cache_insert(struct loom_kv_blocks *kv, int32_t id, struct loom_block_hash h, const int32_t *tokens);

/* Checks every invariant (links, counts, the hash index); aborts on a broken one. For tests. */
void loom_kv_blocks_check(const struct loom_kv_blocks *kv);

#endif
