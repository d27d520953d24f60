/* report.c: machine facts, the git revision and the JSON/table helpers of `loom bench` (see report.h). */
#include "bench/report.h"
#include "core/error.h"
#include "core/util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef LOOM_SOURCE_DIR
#define LOOM_SOURCE_DIR "."
#endif

/* ------------------------------------------------------------------------------------------------ */
/* Machine */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1])) s[--n] = 0;
    return s;
}

static char *cpu_model(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return NULL;
    char line[512];
    char *out = NULL;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "model name", 10) || !strncmp(line, "Model", 5)) {
            char *c = strchr(line, ':');
            if (c) {
                out = loom_strdup(trim(c + 1));
                break;
            }
        }
    }
    fclose(f);
    return out;
}

static long long mem_total(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemTotal: %lld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* /proc/driver/nvidia/gpus/<bus id>/information holds "Model: \t NVIDIA H100 80GB HBM3" */
static json_t *gpu_names(void)
{
    json_t *arr = json_array();
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    if (!d) return arr;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[512];
        snprintf(path, sizeof(path), "/proc/driver/nvidia/gpus/%s/information", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        char line[256];
        while (fgets(line, sizeof(line), f)) {
            if (!strncmp(line, "Model:", 6)) {
                json_array_append_new(arr, json_string(trim(line + 6)));
                break;
            }
        }
        fclose(f);
    }
    closedir(d);
    return arr;
}

char *loom_bench_gpu_name(void)
{
    json_t *g = gpu_names();
    char *out = json_array_size(g) ? loom_strdup(json_string_value(json_array_get(g, 0))) : NULL;
    json_decref(g);
    return out;
}

json_t *loom_bench_machine_json(void)
{
    json_t *m = json_object();
    char *cpu = cpu_model();
    json_object_set_new(m, "cpu_model", cpu ? json_string(cpu) : json_null());
    free(cpu);
    json_object_set_new(m, "cpu_cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
    long long mem = mem_total();
    json_object_set_new(m, "memory_bytes", mem > 0 ? json_integer(mem) : json_null());
    struct utsname u;
    if (!uname(&u)) {
        char k[600];
        snprintf(k, sizeof(k), "%s %s %s", u.sysname, u.release, u.machine);
        json_object_set_new(m, "kernel", json_string(k));
    }
    json_object_set_new(m, "gpus", gpu_names());
    return m;
}

int64_t loom_bench_weight_bytes(const char *model_dir)
{
    DIR *d = opendir(model_dir);
    if (!d) return 0;
    int64_t sum = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        size_t n = strlen(ent->d_name);
        if (n < 12 || strcmp(ent->d_name + n - 12, ".safetensors")) continue;
        char *p = loom_path_join(model_dir, ent->d_name);
        struct stat st;
        if (!stat(p, &st)) sum += st.st_size;
        free(p);
    }
    closedir(d);
    return sum;
}

/* ------------------------------------------------------------------------------------------------ */
/* Git revision, read from the files (no git needed), with `git` as a fallback */

static bool is_hex40(const char *s)
{
    for (int i = 0; i < 40; i++)
        if (!isxdigit((unsigned char)s[i])) return false;
    return true;
}

/* The .git directory of a work tree: a folder, or a file "gitdir: PATH" (worktrees, submodules). */
static char *git_dir(const char *source_dir)
{
    char *p = loom_path_join(source_dir, ".git");
    char *data;
    size_t len;
    if (loom_read_file(p, &data, &len) == 0) { /* reading a directory fails, so this is the file form */
        char *g = strstr(data, "gitdir:");
        char *out = NULL;
        if (g) {
            char *v = trim(g + 7);
            out = v[0] == '/' ? loom_strdup(v) : loom_path_join(source_dir, v);
        }
        free(data);
        free(p);
        return out;
    }
    loom_clear_error();
    return p;
}

static char *read_ref(const char *gdir, const char *ref, int depth)
{
    if (depth > 4) return NULL;
    char *p = loom_path_join(gdir, ref);
    char *data;
    size_t len;
    char *out = NULL;
    if (loom_read_file(p, &data, &len) == 0) {
        char *v = trim(data);
        if (!strncmp(v, "ref:", 4)) out = read_ref(gdir, trim(v + 4), depth + 1);
        else if (strlen(v) >= 40 && is_hex40(v)) out = loom_strndup(v, 40);
        free(data);
    } else {
        loom_clear_error();
    }
    free(p);
    if (!out && strncmp(ref, "HEAD", 4)) {
        /* packed refs: "<sha> <ref>" lines */
        char *pp = loom_path_join(gdir, "packed-refs");
        if (loom_read_file(pp, &data, &len) == 0) {
            for (char *line = strtok(data, "\n"); line; line = strtok(NULL, "\n")) {
                if (strlen(line) > 41 && is_hex40(line) && line[40] == ' ' && !strcmp(trim(line + 41), ref)) {
                    out = loom_strndup(line, 40);
                    break;
                }
            }
            free(data);
        } else {
            loom_clear_error();
        }
        free(pp);
    }
    /* a worktree's refs live in its common dir */
    if (!out) {
        char *cd = loom_path_join(gdir, "commondir");
        if (loom_read_file(cd, &data, &len) == 0) {
            char *v = trim(data);
            char *common = v[0] == '/' ? loom_strdup(v) : loom_path_join(gdir, v);
            if (strcmp(ref, "HEAD")) out = read_ref(common, ref, depth + 1);
            free(common);
            free(data);
        } else {
            loom_clear_error();
        }
        free(cd);
    }
    return out;
}

static char *run_git(const char *source_dir, const char *args)
{
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "git -C '%s' %s 2>/dev/null", source_dir, args);
    if (strchr(source_dir, '\'')) return NULL;
    FILE *f = popen(cmd, "r");
    if (!f) return NULL;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = 0;
    int st = pclose(f);
    if (st != 0) return NULL;
    return loom_strdup(trim(buf));
}

char *loom_bench_git_commit(const char *source_dir)
{
    char *g = git_dir(source_dir);
    char *out = g ? read_ref(g, "HEAD", 0) : NULL;
    free(g);
    if (!out) {
        char *s = run_git(source_dir, "rev-parse HEAD");
        if (s && strlen(s) == 40 && is_hex40(s)) out = s;
        else free(s);
    }
    return out;
}

json_t *loom_bench_git_json(void)
{
    const char *src = LOOM_SOURCE_DIR;
    json_t *o = json_object();
    char *c = loom_bench_git_commit(src);
    json_object_set_new(o, "commit", c ? json_string(c) : json_null());
    /* uncommitted changes to tracked files make the commit an approximation */
    char *st = c ? run_git(src, "status --porcelain --untracked-files=no") : NULL;
    json_object_set_new(o, "dirty", st ? json_boolean(st[0] != 0) : json_null());
    json_object_set_new(o, "source_dir", json_string(src));
    free(c);
    free(st);
    return o;
}

json_t *loom_bench_binary_json(void)
{
    json_t *o = json_object();
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    if (n > 0) {
        path[n] = 0;
        json_object_set_new(o, "path", json_string(path));
        struct stat st;
        if (!stat(path, &st)) {
            char ts[64];
            struct tm tm;
            gmtime_r(&st.st_mtime, &tm);
            strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
            json_object_set_new(o, "built", json_string(ts));
        }
    }
    return o;
}

json_t *loom_bench_argv_json(int argc, char **argv)
{
    json_t *a = json_array();
    for (int i = 0; i < argc; i++) json_array_append_new(a, json_string(argv[i]));
    return a;
}

void loom_bench_timestamp(char *buf, size_t cap)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ------------------------------------------------------------------------------------------------ */
/* JSON and tables */

void loom_bench_pct_word(double q, char *buf, size_t cap)
{
    if (q == (double)(long long)q) snprintf(buf, cap, "%lld", (long long)q);
    else snprintf(buf, cap, "%g", q);
}

void loom_bench_stat_to_json(json_t *obj, const char *name, const struct loom_bench_stat *st, const double *pcts,
                             int n_pct)
{
    char key[96], w[32];
    snprintf(key, sizeof(key), "mean_%s_ms", name);
    json_object_set_new(obj, key, json_real(st->mean * 1000));
    snprintf(key, sizeof(key), "median_%s_ms", name);
    json_object_set_new(obj, key, json_real(st->median * 1000));
    snprintf(key, sizeof(key), "std_%s_ms", name);
    json_object_set_new(obj, key, json_real(st->std * 1000));
    for (int i = 0; i < n_pct; i++) {
        loom_bench_pct_word(pcts[i], w, sizeof(w));
        snprintf(key, sizeof(key), "p%s_%s_ms", w, name);
        json_object_set_new(obj, key, json_real(st->pct[i] * 1000));
    }
}

int loom_bench_write_json(const char *path, json_t *obj)
{
    if (json_dump_file(obj, path, JSON_INDENT(2) | JSON_REAL_PRECISION(10)))
        return loom_fail(LOOM_EIO, "cannot write %s: %s", path, strerror(errno));
    return 0;
}

void loom_bench_line_int(FILE *f, const char *label, long long v)
{
    fprintf(f, "%-40s %-10lld\n", label, v);
}

void loom_bench_line_float(FILE *f, const char *label, double v)
{
    fprintf(f, "%-40s %-10.2f\n", label, v);
}

void loom_bench_line_str(FILE *f, const char *label, const char *v)
{
    fprintf(f, "%-40s %s\n", label, v);
}

void loom_bench_title(FILE *f, const char *title, char c)
{
    int n = (int)strlen(title), left = (50 - n) / 2, right = 50 - n - left;
    for (int i = 0; i < left; i++) fputc(c, f);
    fputs(title, f);
    for (int i = 0; i < right; i++) fputc(c, f);
    fputc('\n', f);
}
