/*
 * safetensors.c: memory-mapped safetensors files, one or sharded behind model.safetensors.index.json.
 *
 * A file is: 8-byte little-endian header length N, N bytes of JSON, then the data section. Every
 * header is untrusted: the length must fit the file (and stay under 100 MB), every entry needs a
 * known dtype, a shape of non-negative dims whose product does not overflow, and data_offsets
 * [begin, end] inside the data section with end - begin == numel * dtype size; no two tensors may
 * share bytes and no name may repeat (also across shards). Lookups go through an open-addressing
 * hash table over all tensors of the set.
 *
 * It does not convert dtypes (core/dtype.h does) and never copies tensor data: `data` points into
 * the read-only mapping, which lives until loom_safetensors_close.
 */
#include "format/safetensors.h"
#include "core/error.h"
#include "core/util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_MAX_HEADER  (100u * 1000u * 1000u) /* the Python library's limit */
#define ST_INDEX_NAME  "model.safetensors.index.json"
#define ST_SINGLE_NAME "model.safetensors"

/* ---------------------------------------------------------------------------------------------- */
/* Header parsing (untrusted bytes) */

void loom_st_header_free(struct loom_st_header *h)
{
    if (!h) return;
    for (int i = 0; i < h->n_tensors; i++) free((char *)h->tensors[i].name);
    free(h->tensors);
    free(h->metadata_json);
    memset(h, 0, sizeof(*h));
}

/* A JSON integer in [0, INT64_MAX]; reals (even integral ones) are rejected like the Rust parser does. */
static int json_u64(const json_t *v, int64_t *out)
{
    if (!json_is_integer(v)) return -1;
    json_int_t x = json_integer_value(v);
    if (x < 0) return -1;
    *out = (int64_t)x;
    return 0;
}

struct span {
    int64_t begin, end;
    int idx;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx - y->idx;
}

static int parse_entry(const char *name, const json_t *v, const uint8_t *data, int64_t data_size,
                       struct loom_st_tensor *t, int64_t *begin_out)
{
    if (!json_is_object(v))
        return loom_fail(LOOM_EINVAL, "tensor '%s': header entry is not a JSON object", name);
    const json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
                 *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return loom_fail(LOOM_EINVAL, "tensor '%s': missing or non-string \"dtype\"", name);
    const char *dts = json_string_value(jd);
    if (loom_dtype_from_name(dts, &t->dtype) != 0)
        return loom_fail(
            LOOM_EINVAL,
            "tensor '%s': dtype '%.32s' is not supported (expected F32, F16, BF16, F64, I64, I32, I8, "
            "U8 or BOOL)",
            name, dts);
    if (!json_is_array(js))
        return loom_fail(LOOM_EINVAL, "tensor '%s': missing or non-array \"shape\"", name);
    size_t nd = json_array_size(js);
    if (nd > LOOM_MAX_DIMS)
        return loom_fail(LOOM_EINVAL, "tensor '%s': %zu dimensions, more than the %d loom supports", name, nd,
                         LOOM_MAX_DIMS);
    bool has_zero = false;
    for (size_t d = 0; d < nd; d++) {
        int64_t dim;
        if (json_u64(json_array_get(js, d), &dim))
            return loom_fail(LOOM_EINVAL, "tensor '%s': shape[%zu] is not a non-negative integer", name, d);
        t->shape[d] = dim;
        has_zero |= dim == 0;
    }
    int64_t numel = has_zero ? 0 : 1;
    for (size_t d = 0; d < nd && numel; d++) {
        if (numel > INT64_MAX / t->shape[d])
            return loom_fail(LOOM_EINVAL, "tensor '%s': the shape's element count overflows 64 bits", name);
        numel *= t->shape[d];
    }
    for (size_t d = nd; d < LOOM_MAX_DIMS; d++) t->shape[d] = 0;
    t->ndim = (int)nd;
    t->numel = numel;
    int64_t esize = (int64_t)loom_dtype_size(t->dtype);
    if (numel > INT64_MAX / esize)
        return loom_fail(LOOM_EINVAL, "tensor '%s': the shape's byte count overflows 64 bits", name);
    int64_t nbytes = numel * esize;

    int64_t begin, end;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || json_u64(json_array_get(jo, 0), &begin) ||
        json_u64(json_array_get(jo, 1), &end))
        return loom_fail(LOOM_EINVAL,
                         "tensor '%s': \"data_offsets\" must be [begin, end], two non-negative integers",
                         name);
    if (begin > end)
        return loom_fail(LOOM_EINVAL, "tensor '%s': data_offsets [%lld, %lld] has begin after end", name,
                         (long long)begin, (long long)end);
    if (end > data_size)
        return loom_fail(
            LOOM_EINVAL,
            "tensor '%s': data_offsets [%lld, %lld] run past the end of the data section (%lld bytes); "
            "the file is truncated or the header is wrong",
            name, (long long)begin, (long long)end, (long long)data_size);
    if (end - begin != nbytes)
        return loom_fail(
            LOOM_EINVAL,
            "tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but dtype %s and its shape need %lld",
            name, (long long)begin, (long long)end, (long long)(end - begin), loom_dtype_name(t->dtype),
            (long long)nbytes);
    t->data = data + begin;
    t->nbytes = (size_t)nbytes;
    *begin_out = begin;
    return 0;
}

int loom_st_header_parse(const uint8_t *buf, size_t len, struct loom_st_header *out)
{
    memset(out, 0, sizeof(*out));
    if (len < 8)
        return loom_fail(LOOM_EINVAL, "file is %zu bytes, too short for the 8-byte header length", len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | buf[i];
    if (hlen > ST_MAX_HEADER)
        return loom_fail(LOOM_EINVAL, "header length %llu is over the 100 MB limit (not a safetensors file?)",
                         (unsigned long long)hlen);
    if (hlen > len - 8)
        return loom_fail(LOOM_EINVAL,
                         "header length %llu is larger than the rest of the file (%zu bytes); truncated?",
                         (unsigned long long)hlen, len - 8);
    if (hlen < 2)
        return loom_fail(LOOM_EINVAL, "header length %llu is too short for a JSON object",
                         (unsigned long long)hlen);
    const uint8_t *data = buf + 8 + hlen;
    int64_t data_size = (int64_t)(len - 8 - hlen);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        if (strstr(jerr.text, "duplicate object key"))
            return loom_fail(LOOM_EINVAL, "header names a tensor twice (%s)", jerr.text);
        return loom_fail(LOOM_EINVAL, "header is not valid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
    }
    if (!json_is_object(root)) {
        json_decref(root);
        return loom_fail(LOOM_EINVAL, "header is not a JSON object");
    }

    size_t cap = json_object_size(root);
    struct loom_st_tensor *ts = loom_calloc(cap ? cap : 1, sizeof(*ts));
    struct span *spans = loom_calloc(cap ? cap : 1, sizeof(*spans));
    int n = 0, status = 0;
    char *meta = NULL;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(val) && !json_is_null(val)) {
                status = loom_fail(LOOM_EINVAL, "\"__metadata__\" is not a JSON object");
                break;
            }
            if (json_is_object(val)) meta = json_dumps(val, JSON_COMPACT);
            continue;
        }
        struct loom_st_tensor *t = &ts[n];
        int64_t begin = 0;
        status = parse_entry(key, val, data, data_size, t, &begin);
        if (status) break;
        t->name = loom_strdup(key);
        spans[n] = (struct span){begin, begin + (int64_t)t->nbytes, n};
        n++;
    }
    json_decref(root);

    if (!status) {
        /* overlap check: sorted by begin, every non-empty tensor must start at or after the previous end */
        qsort(spans, (size_t)n, sizeof(*spans), span_cmp);
        int64_t prev_end = 0;
        int prev = -1;
        for (int i = 0; i < n; i++) {
            if (spans[i].begin == spans[i].end) continue;
            if (prev >= 0 && spans[i].begin < prev_end) {
                status =
                    loom_fail(LOOM_EINVAL,
                              "tensors '%s' and '%s' overlap in the data section ([%lld, %lld] and "
                              "[%lld, %lld])",
                              ts[spans[prev].idx].name, ts[spans[i].idx].name, (long long)spans[prev].begin,
                              (long long)prev_end, (long long)spans[i].begin, (long long)spans[i].end);
                break;
            }
            prev = i;
            prev_end = spans[i].end;
        }
    }
    free(spans);
    out->tensors = ts;
    out->n_tensors = n;
    out->metadata_json = meta;
    if (status) loom_st_header_free(out);
    return status;
}

/* ---------------------------------------------------------------------------------------------- */
/* A set of mapped files with a name index */

struct st_file {
    char *path;
    void *map;
    size_t size;
    struct loom_st_header hdr;
};

struct loom_safetensors {
    struct st_file *files;
    int n_files;
    const struct loom_st_tensor **tensors; /* [n]: every tensor of every file, in file order */
    int n;
    int *table; /* open addressing: tensor index or -1; size table_size (a power of two >= 2n) */
    uint32_t table_size;
};

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static int map_file(const char *path, struct st_file *f)
{
    memset(f, 0, sizeof(*f));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return loom_fail(errno == ENOENT ? LOOM_ENOTFOUND : LOOM_EIO, "cannot open %s: %s", path,
                         strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return loom_fail(LOOM_EIO, "%s is not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return loom_fail(LOOM_EINVAL, "%s: file is %lld bytes, too short for a safetensors header", path,
                         (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED) return loom_fail(LOOM_EIO, "cannot map %s: %s", path, strerror(err));
    f->path = loom_strdup(path);
    f->map = map;
    f->size = (size_t)st.st_size;
    if (loom_st_header_parse(map, f->size, &f->hdr) != 0) {
        int s = loom_fail_context(LOOM_EINVAL, "%s", path);
        munmap(map, f->size);
        free(f->path);
        memset(f, 0, sizeof(*f));
        return s;
    }
    return 0;
}

static int set_find_index(const struct loom_safetensors *st, const char *name)
{
    if (!st->table_size) return -1;
    uint32_t mask = st->table_size - 1;
    for (uint32_t i = hash_name(name) & mask;; i = (i + 1) & mask) {
        int k = st->table[i];
        if (k < 0) return -1;
        if (!strcmp(st->tensors[k]->name, name)) return k;
    }
}

/* Gathers the tensors of all files into one list and hash table; duplicate names are an error. */
static int set_build_index(struct loom_safetensors *st)
{
    int total = 0;
    for (int i = 0; i < st->n_files; i++) total += st->files[i].hdr.n_tensors;
    st->tensors = loom_calloc((size_t)(total ? total : 1), sizeof(*st->tensors));
    uint32_t size = 16;
    while (size < 2u * (uint32_t)total) size <<= 1;
    st->table_size = size;
    st->table = loom_malloc(sizeof(int) * size);
    for (uint32_t i = 0; i < size; i++) st->table[i] = -1;
    st->n = 0;
    for (int f = 0; f < st->n_files; f++) {
        for (int j = 0; j < st->files[f].hdr.n_tensors; j++) {
            const struct loom_st_tensor *t = &st->files[f].hdr.tensors[j];
            int dup = set_find_index(st, t->name);
            if (dup >= 0) {
                const char *other = NULL;
                for (int g = 0; g < st->n_files && !other; g++)
                    for (int k = 0; k < st->files[g].hdr.n_tensors; k++)
                        if (&st->files[g].hdr.tensors[k] == st->tensors[dup]) other = st->files[g].path;
                return loom_fail(LOOM_EINVAL, "tensor '%s' appears in both %s and %s", t->name,
                                 other ? other : "?", st->files[f].path);
            }
            uint32_t mask = size - 1, i = hash_name(t->name) & mask;
            while (st->table[i] >= 0) i = (i + 1) & mask;
            st->table[i] = st->n;
            st->tensors[st->n++] = t;
        }
    }
    return 0;
}

void loom_safetensors_close(struct loom_safetensors *st)
{
    if (!st) return;
    for (int i = 0; i < st->n_files; i++) {
        loom_st_header_free(&st->files[i].hdr);
        if (st->files[i].map) munmap(st->files[i].map, st->files[i].size);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->tensors);
    free(st->table);
    free(st);
}

static bool is_dir(const char *path)
{
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}

/* A shard name from the index must be a plain file name inside the model folder. */
static bool shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

static int open_index(struct loom_safetensors *st, const char *dir, const char *index_path)
{
    char *text;
    size_t len;
    int s = loom_read_file(index_path, &text, &len);
    if (s) return s;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!root)
        return loom_fail(LOOM_EINVAL, "%s is not valid JSON: %s (line %d, column %d)", index_path, jerr.text,
                         jerr.line, jerr.column);
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        json_decref(root);
        return loom_fail(LOOM_EINVAL, "%s has no \"weight_map\" object", index_path);
    }
    /* the distinct shard names, in order of first appearance */
    size_t nw = json_object_size(wm);
    const char **names = loom_calloc(nw ? nw : 1, sizeof(*names));
    int nn = 0;
    const char *key;
    json_t *val;
    s = 0;
    json_object_foreach(wm, key, val)
    {
        if (!json_is_string(val) || !shard_name_ok(json_string_value(val))) {
            s = loom_fail(LOOM_EINVAL, "%s: weight_map entry for tensor '%s' is not a shard file name",
                          index_path, key);
            break;
        }
        const char *fn = json_string_value(val);
        int k = 0;
        while (k < nn && strcmp(names[k], fn)) k++;
        if (k == nn) names[nn++] = fn;
    }
    if (!s && nn == 0) s = loom_fail(LOOM_EINVAL, "%s: weight_map is empty", index_path);
    if (!s) {
        st->files = loom_calloc((size_t)nn, sizeof(*st->files));
        for (int k = 0; k < nn && !s; k++) {
            char *p = loom_path_join(dir, names[k]);
            if (!loom_file_exists(p)) {
                /* name a tensor that lives in the missing shard, so the message says what is lost */
                const char *example = "";
                json_object_foreach(wm, key, val)
                {
                    if (!strcmp(json_string_value(val), names[k])) {
                        example = key;
                        break;
                    }
                }
                s = loom_fail(LOOM_ENOTFOUND,
                              "%s names shard %s (e.g. for tensor '%s'), but %s does not exist", index_path,
                              names[k], example, p);
            } else {
                s = map_file(p, &st->files[k]);
                if (!s) st->n_files = k + 1;
            }
            free(p);
        }
    }
    if (!s) s = set_build_index(st);
    if (!s) {
        /* every tensor the index names must be in the shard it names */
        json_object_foreach(wm, key, val)
        {
            const char *fn = json_string_value(val);
            int k = set_find_index(st, key);
            const struct st_file *f = NULL;
            for (int i = 0; i < st->n_files; i++) {
                const char *base = strrchr(st->files[i].path, '/');
                base = base ? base + 1 : st->files[i].path;
                if (!strcmp(base, fn)) f = &st->files[i];
            }
            bool in_file = k >= 0 && f && st->tensors[k] >= f->hdr.tensors &&
                           st->tensors[k] < f->hdr.tensors + f->hdr.n_tensors;
            if (!in_file) {
                s = loom_fail(LOOM_ENOTFOUND, "%s names tensor '%s' in %s, but that file has no such tensor",
                              index_path, key, f ? f->path : fn);
                break;
            }
        }
    }
    free(names);
    json_decref(root);
    return s;
}

int loom_safetensors_open(const char *path, struct loom_safetensors **out)
{
    *out = NULL;
    struct loom_safetensors *st = loom_calloc(1, sizeof(*st));
    int s;
    if (is_dir(path)) {
        char *index = loom_path_join(path, ST_INDEX_NAME);
        char *single = loom_path_join(path, ST_SINGLE_NAME);
        if (loom_file_exists(index)) {
            s = open_index(st, path, index);
        } else if (loom_file_exists(single)) {
            st->files = loom_calloc(1, sizeof(*st->files));
            s = map_file(single, &st->files[0]);
            if (!s) st->n_files = 1;
            if (!s) s = set_build_index(st);
        } else {
            s = loom_fail(LOOM_ENOTFOUND, "%s has neither %s nor %s: not a Hugging Face model folder", path,
                          ST_INDEX_NAME, ST_SINGLE_NAME);
        }
        free(index);
        free(single);
    } else {
        st->files = loom_calloc(1, sizeof(*st->files));
        s = map_file(path, &st->files[0]);
        if (!s) st->n_files = 1;
        if (!s) s = set_build_index(st);
    }
    if (s) {
        loom_safetensors_close(st);
        return s;
    }
    *out = st;
    return 0;
}

int loom_safetensors_count(const struct loom_safetensors *st)
{
    return st->n;
}

const struct loom_st_tensor *loom_safetensors_at(const struct loom_safetensors *st, int i)
{
    LOOM_ASSERT(i >= 0 && i < st->n);
    return st->tensors[i];
}

const struct loom_st_tensor *loom_safetensors_find(const struct loom_safetensors *st, const char *name)
{
    int k = set_find_index(st, name);
    return k < 0 ? NULL : st->tensors[k];
}

/* ---------------------------------------------------------------------------------------------- */
/* Writer */

struct loom_st_writer {
    FILE *f;
    char *path;
    uint64_t declared, written; /* bytes of tensor data: in the header, and appended so far */
    int status;                 /* first failure, kept for loom_st_writer_close */
};

/* The header: compact JSON, "__metadata__" first, then the tensors in the order given with
 * back-to-back data_offsets; *data_bytes gets the total. */
static int build_header(const char *path, const struct loom_st_tensor *tensors, int n,
                        const char *metadata_json, char **out, uint64_t *data_bytes)
{
    json_t *root = json_object();
    if (metadata_json) {
        json_error_t jerr;
        json_t *m = json_loads(metadata_json, 0, &jerr);
        if (!json_is_object(m)) {
            json_decref(m);
            json_decref(root);
            return loom_fail(LOOM_EINVAL, "safetensors metadata for %s is not a JSON object: %s", path,
                             m ? "wrong type" : jerr.text);
        }
        json_object_set_new(root, "__metadata__", m);
    }
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        const struct loom_st_tensor *t = &tensors[i];
        int64_t numel = 1;
        if (t->ndim < 0 || t->ndim > LOOM_MAX_DIMS || (unsigned)t->dtype >= LOOM_DTYPE_COUNT) {
            json_decref(root);
            return loom_fail(LOOM_EINVAL, "writing %s: tensor '%s' has a bad ndim or dtype", path, t->name);
        }
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) {
            numel *= t->shape[d];
            json_array_append_new(shape, json_integer(t->shape[d]));
        }
        int64_t nbytes = numel * (int64_t)loom_dtype_size(t->dtype);
        if (json_object_get(root, t->name) || !strcmp(t->name, "__metadata__")) {
            json_decref(shape);
            json_decref(root);
            return loom_fail(LOOM_EINVAL, "writing %s: tensor name '%s' is repeated or reserved", path,
                             t->name);
        }
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(loom_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape);
        json_t *offs = json_array();
        json_array_append_new(offs, json_integer(off));
        json_array_append_new(offs, json_integer(off + nbytes));
        json_object_set_new(e, "data_offsets", offs);
        json_object_set_new(root, t->name, e);
        off += nbytes;
    }
    *out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    *data_bytes = (uint64_t)off;
    return 0;
}

int loom_st_writer_open(const char *path, const struct loom_st_tensor *tensors, int n,
                        const char *metadata_json, struct loom_st_writer **out)
{
    *out = NULL;
    char *hdr;
    uint64_t declared;
    int s = build_header(path, tensors, n, metadata_json, &hdr, &declared);
    if (s) return s;
    size_t hlen = strlen(hdr), padded = (hlen + 7) & ~(size_t)7;

    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        return loom_fail(LOOM_EIO, "cannot create %s: %s", path, strerror(errno));
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    bool ok = fwrite(lenb, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen &&
              fwrite("        ", 1, padded - hlen, f) == padded - hlen; /* spaces to 8-byte alignment */
    free(hdr);
    if (!ok) {
        s = loom_fail(LOOM_EIO, "cannot write %s: %s (disk full?)", path, strerror(errno));
        fclose(f);
        return s;
    }
    struct loom_st_writer *w = loom_calloc(1, sizeof(*w));
    w->f = f;
    w->path = loom_strdup(path);
    w->declared = declared;
    *out = w;
    return 0;
}

int loom_st_writer_write(struct loom_st_writer *w, const void *bytes, size_t n)
{
    if (w->status) return w->status;
    if (n > w->declared - w->written)
        return w->status =
                   loom_fail(LOOM_EINVAL,
                             "writing %s: %zu more bytes after %llu would pass the %llu bytes of "
                             "tensor data the header declares; write each tensor's exact size",
                             w->path, n, (unsigned long long)w->written, (unsigned long long)w->declared);
    if (n && fwrite(bytes, 1, n, w->f) != n)
        return w->status = loom_fail(LOOM_EIO, "cannot write %s: %s (disk full?)", w->path, strerror(errno));
    w->written += n;
    return 0;
}

int loom_st_writer_close(struct loom_st_writer *w)
{
    if (!w) return 0;
    int s = w->status;
    if (!s && w->written != w->declared)
        s = loom_fail(LOOM_EINVAL,
                      "writing %s: closed after %llu of the %llu bytes of tensor data the header declares; "
                      "the file is truncated",
                      w->path, (unsigned long long)w->written, (unsigned long long)w->declared);
    if (fclose(w->f) != 0 && !s) s = loom_fail(LOOM_EIO, "cannot write %s: %s", w->path, strerror(errno));
    free(w->path);
    free(w);
    return s;
}

int loom_safetensors_write(const char *path, const struct loom_st_tensor *tensors, int n,
                           const char *metadata_json)
{
    struct loom_st_writer *w;
    int s = loom_st_writer_open(path, tensors, n, metadata_json, &w);
    if (s) return s;
    for (int i = 0; i < n && !s; i++) {
        int64_t numel = 1;
        for (int d = 0; d < tensors[i].ndim; d++) numel *= tensors[i].shape[d];
        s = loom_st_writer_write(w, tensors[i].data, (size_t)numel * loom_dtype_size(tensors[i].dtype));
    }
    int c = loom_st_writer_close(w);
    return s ? s : c;
}
