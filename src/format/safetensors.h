/*
 * safetensors.h: read-only access to a model's weights in safetensors files, memory-mapped.
 *
 * A "set" is one model.safetensors or the shards named by model.safetensors.index.json. Headers are
 * untrusted: every offset, shape and dtype is checked against the file size before any tensor is
 * visible; overlapping or out-of-range data, bad JSON, and size/shape mismatches are LOOM_EINVAL
 * with a message naming the file and the tensor. Tensor data stays in the page cache (mmap).
 * Also a writer: whole-file (tests), or streaming tensor by tensor (`loom make-model`).
 */
#ifndef LOOM_FORMAT_SAFETENSORS_H
#define LOOM_FORMAT_SAFETENSORS_H

#include "core/dtype.h"
#include <stddef.h>
#include <stdint.h>

#define LOOM_MAX_DIMS 8

struct loom_st_tensor {
    const char *name;
    enum loom_dtype dtype;
    int ndim;
    int64_t shape[LOOM_MAX_DIMS];
    int64_t numel;
    const void *data; /* inside the mapping; aligned only as the file aligns it */
    size_t nbytes;
};

struct loom_safetensors;

/* path: a model folder (index or model.safetensors inside), or one .safetensors file. */
int loom_safetensors_open(const char *path, struct loom_safetensors **out);
void loom_safetensors_close(struct loom_safetensors *st);

int loom_safetensors_count(const struct loom_safetensors *st);
const struct loom_st_tensor *loom_safetensors_at(const struct loom_safetensors *st, int i);
/* NULL if absent (no error set). */
const struct loom_st_tensor *loom_safetensors_find(const struct loom_safetensors *st, const char *name);

/* Parses one file's header from memory: buf is the whole file (len bytes). Exposed for the fuzzer and
 * tests; on success the tensors point into buf. Caller frees with loom_st_header_free. */
struct loom_st_header {
    struct loom_st_tensor *tensors;
    int n_tensors;
    char *metadata_json; /* the "__metadata__" object re-serialized, or NULL */
};
int loom_st_header_parse(const uint8_t *buf, size_t len, struct loom_st_header *out);
void loom_st_header_free(struct loom_st_header *h);

/* Writer: tensors in the order given; data is copied from each tensor's data pointer. */
int loom_safetensors_write(const char *path, const struct loom_st_tensor *tensors, int n,
                           const char *metadata_json /* nullable, e.g. {"format":"pt"} */);

/* Streaming writer, for files larger than memory. open writes the header for specs[0..n) (name, dtype,
 * ndim, shape; data, numel and nbytes unused; metadata_json as above): compact JSON padded with spaces
 * to a multiple of 8 bytes, data_offsets back to back in the order given. write appends tensor data in
 * that order, in pieces of any size; more bytes than the header declares is LOOM_EINVAL, and the writer
 * then refuses every later write. close frees the writer and returns its first failure, or LOOM_EINVAL
 * if fewer bytes were written than declared (the file is left truncated), or LOOM_EIO. The file is
 * byte-identical to loom_safetensors_write's for the same tensors. */
struct loom_st_writer;
int loom_st_writer_open(const char *path, const struct loom_st_tensor *specs, int n,
                        const char *metadata_json, struct loom_st_writer **out);
int loom_st_writer_write(struct loom_st_writer *w, const void *bytes, size_t n);
int loom_st_writer_close(struct loom_st_writer *w); /* NULL: returns 0 */

#endif
