/* util.c: whole-file reads, path joins, int lists. */
#include "core/util.h"
#include "core/error.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int loom_read_file(const char *path, char **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return loom_fail(LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = loom_malloc(cap + 1);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        cap *= 2;
        buf = loom_realloc(buf, cap + 1);
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return loom_fail(LOOM_EIO, "cannot read %s", path);
    }
    buf[n] = 0;
    *data = buf;
    if (len) *len = n;
    return 0;
}

int loom_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return loom_fail(LOOM_EIO, "cannot create %s: %s", path, strerror(errno));
    size_t put = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || put != len) return loom_fail(LOOM_EIO, "cannot write %s", path);
    return 0;
}

bool loom_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

char *loom_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = loom_malloc(a + b + 2);
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

int loom_parse_int_list(const char *s, int32_t **out, int *n)
{
    int cap = 16, cnt = 0;
    int32_t *v = loom_malloc(sizeof(int32_t) * cap);
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '[' || *p == ']' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < INT32_MIN || x > INT32_MAX) {
            free(v);
            return loom_fail(LOOM_EINVAL, "bad integer at '%.20s' in list '%.60s'", p, s);
        }
        if (cnt == cap) v = loom_realloc(v, sizeof(int32_t) * (cap *= 2));
        v[cnt++] = (int32_t)x;
        p = end;
    }
    *out = v;
    *n = cnt;
    return 0;
}
