/*
 * tokenizer.c: loads tokenizer.json (+ tokenizer_config.json) and runs the encode pipeline of
 * Hugging Face `tokenizers` (TokenizerImpl::encode_single_sequence):
 *   1. added tokens with normalized=false are found in the raw text (leftmost-longest, with the
 *      lstrip/rstrip/single_word rules), 2. every other piece is normalized, 3. added tokens with
 *      normalized=true are found in the normalized piece, 4. the rest is pre-tokenized and each word
 *      goes through the BPE model, 5. with add_special_tokens the post-processor (TemplateProcessing,
 *      Bert/Roberta, ByteLevel, Sequence) adds its special tokens.
 * Also the vocabulary queries of tokenizer.h. Decoding is decode.c, streaming detok.c.
 * Does not do: truncation, padding, pairs of sequences, offsets; models other than BPE.
 * Thread safety: a loaded tokenizer is read-only; encode/decode may run on many threads at once.
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"
#include "core/util.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

int32_t tok_strmap_get(const struct tok_strmap *m, const char *const *str, const uint32_t *len, const char *s,
                       size_t n);
void tok_strmap_put(struct tok_strmap *m, const char *const *str, const uint32_t *len, int32_t id);

/* ---------------------------------------------------------------------------------------------- */
/* the added-token trie */

static int32_t trie_child(const struct tok_trie *tr, int node, uint8_t c)
{
    uint32_t key = ((uint32_t)node << 8 | c) + 1;
    uint32_t i = (key * 2654435761u) & tr->mask;
    for (;;) {
        if (tr->keys[i] == key) return tr->child[i];
        if (!tr->keys[i]) return -1;
        i = (i + 1) & tr->mask;
    }
}

static void trie_build(struct tok_trie *tr, const char *const *pats, const size_t *lens, const int32_t *idx, int n)
{
    size_t total = 1;
    for (int i = 0; i < n; i++) total += lens[i];
    size_t cap = 16;
    while (cap < total * 2) cap <<= 1;
    tr->mask = (uint32_t)(cap - 1);
    tr->keys = loom_calloc(cap, sizeof(uint32_t));
    tr->child = loom_malloc(cap * sizeof(int32_t));
    tr->term = loom_malloc(total * sizeof(int32_t));
    tr->term[0] = -1;
    tr->n_nodes = 1;
    memset(tr->first, 0, sizeof(tr->first));
    tr->any = false;
    for (int i = 0; i < n; i++) {
        if (!lens[i]) continue;
        int node = 0;
        for (size_t k = 0; k < lens[i]; k++) {
            uint8_t c = (uint8_t)pats[i][k];
            int ch = trie_child(tr, node, c);
            if (ch < 0) {
                ch = tr->n_nodes++;
                tr->term[ch] = -1;
                uint32_t key = ((uint32_t)node << 8 | c) + 1;
                uint32_t h = (key * 2654435761u) & tr->mask;
                while (tr->keys[h]) h = (h + 1) & tr->mask;
                tr->keys[h] = key;
                tr->child[h] = ch;
            }
            node = ch;
        }
        /* the same pattern twice: aho-corasick reports the first one */
        if (tr->term[node] < 0) tr->term[node] = idx[i];
        tr->first[(uint8_t)pats[i][0]] = true;
        tr->any = true;
    }
}

static void trie_free(struct tok_trie *tr)
{
    free(tr->keys);
    free(tr->child);
    free(tr->term);
    memset(tr, 0, sizeof(*tr));
}

/* Leftmost-longest match at or after pos: returns the added-token index and [*ms, *me), or -1. */
static int trie_find(const struct tok_trie *tr, const char *s, size_t n, size_t pos, size_t *ms, size_t *me)
{
    if (!tr->any) return -1;
    for (size_t i = pos; i < n; i++) {
        if (!tr->first[(uint8_t)s[i]]) continue;
        int node = 0, best = -1;
        size_t best_end = 0;
        for (size_t k = i; k < n; k++) {
            node = trie_child(tr, node, (uint8_t)s[k]);
            if (node < 0) break;
            if (tr->term[node] >= 0) {
                best = tr->term[node];
                best_end = k + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            return best;
        }
    }
    return -1;
}

/* regex's \w (Unicode): letters, marks, digits, connector punctuation */
static bool is_word_char(uint32_t cp)
{
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_ME) || c == UTF8PROC_CATEGORY_ND ||
           c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_PC;
}

static uint32_t last_char(const char *s, size_t n, size_t *start)
{
    size_t k = n - 1;
    while (k > 0 && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
    int l;
    if (start) *start = k;
    return tok_utf8_decode((const uint8_t *)s + k, &l);
}

typedef int (*piece_fn)(struct tok_enc *e, const char *s, size_t n, bool at_start);

/* HF's AddedVocabulary::find_matches + split: calls fn for the text between added tokens and
 * pushes the ids of the tokens themselves. */
static int split_added(struct tok_enc *e, const struct tok_trie *tr, const char *s, size_t n, bool at_start,
                       piece_fn fn)
{
    const struct loom_tokenizer *t = e->t;
    size_t start_offset = 0, pos = 0, ms, me;
    int idx, rc;
    while ((idx = trie_find(tr, s, n, pos, &ms, &me)) >= 0) {
        pos = me;
        const struct tok_added *a = &t->added[idx];
        size_t start = ms, stop = me;
        if (a->single_word) {
            int l;
            bool start_space = start == 0 || !is_word_char(last_char(s, start, NULL));
            bool stop_space = stop == n || !is_word_char(tok_utf8_decode((const uint8_t *)s + stop, &l));
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t k;
                uint32_t cp = last_char(s, ns, &k);
                if (!tok_is_whitespace(cp)) break;
                ns = k;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                int l;
                uint32_t cp = tok_utf8_decode((const uint8_t *)s + stop, &l);
                if (!tok_is_whitespace(cp)) break;
                stop += (size_t)l;
            }
        }
        if (start_offset < start) {
            rc = fn(e, s + start_offset, start - start_offset, at_start && start_offset == 0);
            if (rc) return rc;
        }
        tok_enc_push(e, a->id);
        start_offset = stop;
    }
    if (start_offset < n) return fn(e, s + start_offset, n - start_offset, at_start && start_offset == 0);
    return 0;
}

static int piece_pretok(struct tok_enc *e, const char *s, size_t n, bool at_start)
{
    return tok_pretok_run(e, s, n, at_start);
}

static int piece_normalize(struct tok_enc *e, const char *s, size_t n, bool at_start)
{
    const char *ns;
    size_t nn;
    int rc = tok_normalize(e, s, n, &ns, &nn);
    if (rc) return rc;
    if (!nn) return 0;
    return split_added(e, &e->t->trie_norm, ns, nn, at_start, piece_pretok);
}

/* ---------------------------------------------------------------------------------------------- */
/* encode */

void tok_enc_push(struct tok_enc *e, int32_t id)
{
    if (e->n_ids == e->cap_ids) {
        e->cap_ids = e->cap_ids ? e->cap_ids * 2 : 64;
        e->ids = loom_realloc(e->ids, e->cap_ids * sizeof(int32_t));
    }
    e->ids[e->n_ids++] = id;
}

static void enc_free(struct tok_enc *e)
{
    tok_matcher_free(&e->m);
    for (int i = 0; i < TOK_MAX_DEPTH; i++) {
        tok_buf_free(&e->lvl_a[i]);
        tok_buf_free(&e->lvl_b[i]);
        tok_spanvec_free(&e->spans[i]);
        tok_spanvec_free(&e->spans2[i]);
    }
    for (int i = 0; i < 3; i++) tok_buf_free(&e->nb[i]);
    tok_buf_free(&e->word);
    free(e->sym);
    free(e->heap);
    free(e->rq.bucket_of);
    free(e->rq.buckets);
    free(e->rq.arena);
    free(e->rq.heap);
    free(e->rq.tmp);
    free(e->wc);
    tok_buf_free(&e->wc_words);
    free(e->wc_ids);
}

static void post_process(struct tok_enc *e)
{
    const struct loom_tokenizer *t = e->t;
    for (int p = 0; p < t->n_posts; p++) {
        const struct tok_post *pp = &t->posts[p];
        size_t total = 0;
        for (int i = 0; i < pp->n_items; i++) total += pp->items[i].is_seq ? e->n_ids : (size_t)pp->items[i].n_ids;
        int32_t *out = loom_malloc((total ? total : 1) * sizeof(int32_t));
        size_t k = 0;
        for (int i = 0; i < pp->n_items; i++) {
            const struct tok_post_item *it = &pp->items[i];
            if (it->is_seq) {
                if (e->n_ids) memcpy(out + k, e->ids, e->n_ids * sizeof(int32_t));
                k += e->n_ids;
            } else {
                if (it->n_ids) memcpy(out + k, it->ids, (size_t)it->n_ids * sizeof(int32_t));
                k += (size_t)it->n_ids;
            }
        }
        free(e->ids);
        e->ids = out;
        e->n_ids = e->cap_ids = k;
        if (!e->cap_ids) e->cap_ids = 1;
    }
}

int loom_tokenizer_encode(const struct loom_tokenizer *t, const char *text, size_t len, bool add_special_tokens,
                          int32_t **ids, int *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    if (!text && len) return loom_fail(LOOM_EINVAL, "tokenizer: NULL text of %zu bytes", len);
    if (len > 0x7fffffffu)
        return loom_fail(LOOM_ETOOLONG, "tokenizer: a text of %zu bytes is too long (at most 2 GiB)", len);
    size_t bad = loom_utf8_validate(text, len);
    if (bad != len)
        return loom_fail(LOOM_EINVAL, "tokenizer: the text is not valid UTF-8 (byte 0x%02x at offset %zu)",
                         (uint8_t)text[bad], bad);
    struct tok_enc e;
    memset(&e, 0, sizeof(e));
    e.t = t;
    int rc = len ? split_added(&e, &t->trie_raw, text, len, true, piece_normalize) : 0;
    if (!rc && add_special_tokens) post_process(&e);
    if (!rc && e.n_ids > 0x7fffffff) rc = loom_fail(LOOM_ETOOLONG, "tokenizer: too many tokens");
    if (rc) {
        free(e.ids);
        enc_free(&e);
        return rc;
    }
    *ids = e.ids ? e.ids : loom_malloc(sizeof(int32_t));
    *n_ids = (int)e.n_ids;
    enc_free(&e);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* loading */

static int load_added(struct loom_tokenizer *t, json_t *arr)
{
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return loom_fail(LOOM_EINVAL, "tokenizer.json: \"added_tokens\" is not an array");
    size_t n = json_array_size(arr);
    t->added = loom_calloc(n ? n : 1, sizeof(*t->added));
    size_t i;
    json_t *a;
    json_array_foreach(arr, i, a)
    {
        json_t *id = json_object_get(a, "id"), *c = json_object_get(a, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > 0x7ffffff0 ||
            !json_is_string(c))
            return loom_fail(LOOM_EINVAL, "tokenizer.json: added_tokens[%zu] needs an \"id\" and a \"content\"", i);
        struct tok_added *x = &t->added[t->n_added++];
        x->len = json_string_length(c);
        x->content = loom_strndup(json_string_value(c), x->len);
        x->id = (int32_t)json_integer_value(id);
        x->special = json_is_true(json_object_get(a, "special"));
        json_t *nm = json_object_get(a, "normalized");
        x->normalized = nm ? json_is_true(nm) : !x->special;
        x->lstrip = json_is_true(json_object_get(a, "lstrip"));
        x->rstrip = json_is_true(json_object_get(a, "rstrip"));
        x->single_word = json_is_true(json_object_get(a, "single_word"));
        if (!x->len) return loom_fail(LOOM_EINVAL, "tokenizer.json: added_tokens[%zu] has empty content", i);
        if (loom_utf8_validate(x->content, x->len) != x->len)
            return loom_fail(LOOM_EINVAL, "tokenizer.json: added_tokens[%zu] is not valid UTF-8", i);
    }
    return 0;
}

static int load_post_one(struct loom_tokenizer *t, json_t *j, int *cap)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_fail(LOOM_EINVAL, "tokenizer.json: a post_processor has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "processors");
        if (!json_is_array(list))
            return loom_fail(LOOM_EINVAL, "tokenizer.json: Sequence post_processor without a list");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x)
        {
            int rc = load_post_one(t, x, cap);
            if (rc) return rc;
        }
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    struct tok_post p = {0};
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(j, "single"), *specials = json_object_get(j, "special_tokens");
        if (!json_is_array(single))
            return loom_fail(LOOM_EINVAL, "tokenizer.json: TemplateProcessing without a \"single\" template");
        p.items = loom_calloc(json_array_size(single) + 1, sizeof(*p.items));
        size_t i;
        json_t *it;
        json_array_foreach(single, i, it)
        {
            json_t *sp = json_object_get(it, "SpecialToken"), *sq = json_object_get(it, "Sequence");
            struct tok_post_item *pi = &p.items[p.n_items++];
            if (sq) {
                pi->is_seq = true;
                continue;
            }
            const char *name = json_string_value(json_object_get(sp, "id"));
            json_t *def = name ? json_object_get(specials, name) : NULL;
            json_t *ids = json_object_get(def, "ids");
            if (!json_is_array(ids)) {
                for (int k = 0; k < p.n_items; k++) free(p.items[k].ids);
                free(p.items);
                return loom_fail(LOOM_EINVAL, "tokenizer.json: TemplateProcessing special token '%s' is not defined",
                                 name ? name : "?");
            }
            pi->n_ids = (int)json_array_size(ids);
            pi->ids = loom_malloc(((size_t)pi->n_ids + 1) * sizeof(int32_t));
            for (int k = 0; k < pi->n_ids; k++) pi->ids[k] = (int32_t)json_integer_value(json_array_get(ids, k));
        }
    } else if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        json_t *cls = json_object_get(j, "cls"), *sep = json_object_get(j, "sep");
        if (!json_is_array(cls) || !json_is_array(sep) || json_array_size(cls) != 2 || json_array_size(sep) != 2)
            return loom_fail(LOOM_EINVAL, "tokenizer.json: %s needs \"cls\" and \"sep\" as [token, id]", type);
        p.items = loom_calloc(3, sizeof(*p.items));
        p.n_items = 3;
        p.items[0].ids = loom_malloc(sizeof(int32_t));
        p.items[0].ids[0] = (int32_t)json_integer_value(json_array_get(cls, 1));
        p.items[0].n_ids = 1;
        p.items[1].is_seq = true;
        p.items[2].ids = loom_malloc(sizeof(int32_t));
        p.items[2].ids[0] = (int32_t)json_integer_value(json_array_get(sep, 1));
        p.items[2].n_ids = 1;
    } else {
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: post_processor type '%s' is not supported", type);
    }
    if (t->n_posts == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->posts = loom_realloc(t->posts, (size_t)*cap * sizeof(*t->posts));
    }
    t->posts[t->n_posts++] = p;
    return 0;
}

static char *special_from_config(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return NULL;
    return loom_strndup(json_string_value(v), json_string_length(v));
}

static int build(struct loom_tokenizer *t, json_t *root, const struct tok_json_sections *fast)
{
    int rc;
    if (!json_is_object(root)) return loom_fail(LOOM_EINVAL, "tokenizer.json: the top level is not an object");
    tok_bytelevel_init(t);
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return loom_fail(LOOM_EINVAL, "tokenizer.json: no \"model\" object");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!mtype && json_object_get(model, "merges") && json_object_get(model, "vocab")) mtype = "BPE";
    if (!mtype) return loom_fail(LOOM_EINVAL, "tokenizer.json: model has no \"type\"");
    if (strcmp(mtype, "BPE"))
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: model type '%s' is not supported (only BPE)", mtype);
    if ((rc = tok_bpe_load(t, model, fast))) return rc;
    if ((rc = tok_norm_load(t, json_object_get(root, "normalizer")))) return rc;
    if ((rc = tok_pretok_load(t, json_object_get(root, "pre_tokenizer")))) return rc;
    json_t *post = json_object_get(root, "post_processor");
    if (post && !json_is_null(post)) {
        int cap = 0;
        if (!json_is_object(post)) return loom_fail(LOOM_EINVAL, "tokenizer.json: \"post_processor\" is not an object");
        if ((rc = load_post_one(t, post, &cap))) return rc;
    }
    if ((rc = tok_dec_load(t, json_object_get(root, "decoder")))) return rc;
    if ((rc = load_added(t, json_object_get(root, "added_tokens")))) return rc;

    /* ids */
    t->vocab_size = t->bpe.n_ids;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id >= t->vocab_size) t->vocab_size = t->added[i].id + 1;
    t->added_by_id = loom_malloc(((size_t)t->vocab_size + 1) * sizeof(int32_t));
    for (int32_t i = 0; i < t->vocab_size; i++) t->added_by_id[i] = -1;
    t->added_str = loom_malloc(((size_t)t->n_added + 1) * sizeof(char *));
    t->added_len = loom_malloc(((size_t)t->n_added + 1) * sizeof(uint32_t));
    tok_strmap_init(&t->added_map, (size_t)t->n_added);
    for (int i = 0; i < t->n_added; i++) {
        t->added_by_id[t->added[i].id] = i;
        t->added_str[i] = t->added[i].content;
        t->added_len[i] = (uint32_t)t->added[i].len;
        tok_strmap_put(&t->added_map, t->added_str, t->added_len, i);
    }
    for (int p = 0; p < t->n_posts; p++)
        for (int k = 0; k < t->posts[p].n_items; k++)
            for (int q = 0; q < t->posts[p].items[k].n_ids; q++) {
                int32_t id = t->posts[p].items[k].ids[q];
                if (id < 0 || id >= t->vocab_size)
                    return loom_fail(LOOM_EINVAL, "tokenizer.json: post_processor token id %d is out of range", id);
            }

    /* the tries: raw text for normalized=false, normalized text for normalized=true */
    const char **pr = loom_malloc(((size_t)t->n_added + 1) * sizeof(char *));
    size_t *lr = loom_malloc(((size_t)t->n_added + 1) * sizeof(size_t));
    int32_t *ir = loom_malloc(((size_t)t->n_added + 1) * sizeof(int32_t));
    t->norm_content = loom_calloc((size_t)t->n_added + 1, sizeof(char *));
    int nr = 0, nn = 0;
    for (int i = 0; i < t->n_added; i++)
        if (!t->added[i].normalized) {
            pr[nr] = t->added[i].content;
            lr[nr] = t->added[i].len;
            ir[nr++] = i;
        }
    trie_build(&t->trie_raw, pr, lr, ir, nr);
    struct tok_enc e;
    memset(&e, 0, sizeof(e));
    e.t = t;
    for (int i = 0; i < t->n_added && !rc; i++)
        if (t->added[i].normalized) {
            const char *s;
            size_t sl;
            rc = tok_normalize(&e, t->added[i].content, t->added[i].len, &s, &sl);
            if (rc) break;
            t->norm_content[i] = loom_strndup(s, sl);
            pr[nn] = t->norm_content[i];
            lr[nn] = sl;
            ir[nn++] = i;
        }
    enc_free(&e);
    if (!rc) trie_build(&t->trie_norm, pr, lr, ir, nn);
    free(pr);
    free(lr);
    free(ir);
    return rc;
}

int loom_tokenizer_load_json(const char *tokenizer_json, size_t len, const char *config_json, size_t config_len,
                             struct loom_tokenizer **out)
{
    *out = NULL;
    json_error_t err;
    /* model.vocab and model.merges are parsed by tok_json.c, the rest by jansson; if the fast path
     * meets anything unexpected, all of it goes to jansson */
    struct tok_json_sections sec;
    bool fast = tok_json_split(tokenizer_json, len, &sec) == 0;
    json_t *root = fast ? json_loadb(sec.rest, sec.rest_len, JSON_ALLOW_NUL, &err) : NULL;
    if (!root) {
        if (fast) free(sec.rest);
        fast = false;
        root = json_loadb(tokenizer_json, len, JSON_ALLOW_NUL, &err);
    }
    if (!root)
        return loom_fail(LOOM_EINVAL, "tokenizer.json: invalid JSON at line %d column %d: %s", err.line, err.column,
                         err.text);
    json_t *cfg = NULL;
    if (config_json) {
        /* INT_AS_REAL: configs carry integers beyond 64 bits (model_max_length = 1e30) */
        cfg = json_loadb(config_json, config_len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &err);
        if (!cfg) {
            json_decref(root);
            if (fast) free(sec.rest);
            return loom_fail(LOOM_EINVAL, "tokenizer_config.json: invalid JSON at line %d column %d: %s", err.line,
                             err.column, err.text);
        }
    }
    struct loom_tokenizer *t = loom_calloc(1, sizeof(*t));
    t->bos_id = t->eos_id = -1;
    int rc = build(t, root, fast ? &sec : NULL);
    json_decref(root);
    if (fast) free(sec.rest);
    if (rc == TOK_FALLBACK) {
        loom_tokenizer_free(t);
        t = loom_calloc(1, sizeof(*t));
        t->bos_id = t->eos_id = -1;
        root = json_loadb(tokenizer_json, len, JSON_ALLOW_NUL, &err);
        if (!root) rc = loom_fail(LOOM_EINVAL, "tokenizer.json: invalid JSON at line %d column %d: %s", err.line,
                                  err.column, err.text);
        else rc = build(t, root, NULL);
        json_decref(root);
    }
    if (!rc && cfg) {
        t->config_json = loom_strndup(config_json, config_len);
        t->bos_token = special_from_config(cfg, "bos_token");
        t->eos_token = special_from_config(cfg, "eos_token");
        if (t->bos_token) t->bos_id = loom_tokenizer_token_to_id(t, t->bos_token);
        if (t->eos_token) t->eos_id = loom_tokenizer_token_to_id(t, t->eos_token);
    }
    json_decref(cfg);
    if (rc) {
        loom_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int loom_tokenizer_load(const char *dir, struct loom_tokenizer **out)
{
    *out = NULL;
    char *path = loom_path_join(dir, "tokenizer.json");
    if (!loom_file_exists(path)) {
        int rc = loom_fail(LOOM_ENOTFOUND, "no tokenizer.json in %s (the model runs on token ids only)", dir);
        free(path);
        return rc;
    }
    char *data = NULL, *cfg = NULL;
    size_t len = 0, cfg_len = 0;
    int rc = loom_read_file(path, &data, &len);
    free(path);
    if (rc) return rc;
    path = loom_path_join(dir, "tokenizer_config.json");
    if (loom_file_exists(path) && (rc = loom_read_file(path, &cfg, &cfg_len))) {
        free(path);
        free(data);
        return rc;
    }
    free(path);
    rc = loom_tokenizer_load_json(data, len, cfg, cfg_len, out);
    if (rc) loom_fail_context(rc, "loading the tokenizer of %s", dir);
    free(data);
    free(cfg);
    return rc;
}

void loom_tokenizer_free(struct loom_tokenizer *t)
{
    if (!t) return;
    tok_bpe_free(&t->bpe);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        if (t->norm_content) free(t->norm_content[i]);
    }
    free(t->added);
    free(t->norm_content);
    free(t->added_by_id);
    free(t->added_str);
    free(t->added_len);
    tok_strmap_free(&t->added_map);
    trie_free(&t->trie_raw);
    trie_free(&t->trie_norm);
    for (int i = 0; i < t->n_norms; i++) tok_norm_free(&t->norms[i]);
    free(t->norms);
    for (int i = 0; i < t->n_pretoks; i++) tok_pretok_free(&t->pretoks[i]);
    free(t->pretoks);
    for (int i = 0; i < t->n_posts; i++) {
        for (int k = 0; k < t->posts[i].n_items; k++) free(t->posts[i].items[k].ids);
        free(t->posts[i].items);
    }
    free(t->posts);
    for (int i = 0; i < t->n_decs; i++) tok_dec_free(&t->decs[i]);
    free(t->decs);
    free(t->bos_token);
    free(t->eos_token);
    free(t->config_json);
    free(t);
}

/* ---------------------------------------------------------------------------------------------- */
/* queries */

int loom_tokenizer_vocab_size(const struct loom_tokenizer *t)
{
    return t->vocab_size;
}

const char *loom_tokenizer_id_to_token(const struct loom_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->vocab_size) return NULL;
    if (t->added_by_id[id] >= 0) return t->added[t->added_by_id[id]].content;
    if (id < t->bpe.n_ids) return t->bpe.str[id];
    return NULL;
}

int32_t loom_tokenizer_token_to_id(const struct loom_tokenizer *t, const char *token)
{
    size_t n = strlen(token);
    int32_t i = tok_strmap_get(&t->added_map, t->added_str, t->added_len, token, n);
    if (i >= 0) return t->added[i].id;
    return tok_bpe_lookup(&t->bpe, token, n);
}

bool loom_tokenizer_is_special(const struct loom_tokenizer *t, int32_t id)
{
    if (id < 0 || id >= t->vocab_size || t->added_by_id[id] < 0) return false;
    return t->added[t->added_by_id[id]].special;
}

int32_t loom_tokenizer_bos_id(const struct loom_tokenizer *t)
{
    return t->bos_id;
}

int32_t loom_tokenizer_eos_id(const struct loom_tokenizer *t)
{
    return t->eos_id;
}

const char *loom_tokenizer_bos_token(const struct loom_tokenizer *t)
{
    return t->bos_token;
}

const char *loom_tokenizer_eos_token(const struct loom_tokenizer *t)
{
    return t->eos_token;
}

const char *loom_tokenizer_config_json(const struct loom_tokenizer *t)
{
    return t->config_json;
}
