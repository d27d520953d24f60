/*
 * test_tokenizer_oracle.c: every encode case that Hugging Face `tokenizers` recorded in
 * ../shared/oracles/tokenizers/hf_tokenizers.json (and _stories260K.json), for every tokenizer folder:
 * ids without special tokens, ids with the post-processor, decode, and decode skipping special
 * tokens, all identical. Also the load time of each tokenizer.
 */
#include "core/error.h"
#include "core/log.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

static bool same_ids(const int32_t *a, int na, json_t *b)
{
    if (!json_is_array(b) || (size_t)na != json_array_size(b)) return false;
    for (int i = 0; i < na; i++)
        if (a[i] != json_integer_value(json_array_get(b, (size_t)i))) return false;
    return true;
}

static void print_ids(const char *what, const int32_t *a, int n)
{
    fprintf(stderr, "    %s:", what);
    for (int i = 0; i < n; i++) fprintf(stderr, " %d", a[i]);
    fputc('\n', stderr);
}

static void run(const char *dir, json_t *cases, const char *name)
{
    struct loom_tokenizer *t;
    double t0 = loom_now();
    int rc = loom_tokenizer_load(test_shared(dir), &t);
    double dt = loom_now() - t0;
    CHECK_MSG(rc == 0, "%s: %s", dir, loom_last_error());
    if (rc) return;
    int pass = 0, total = 0;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *text = json_string_value(json_object_get(c, "text"));
        size_t len = json_string_length(json_object_get(c, "text"));
        json_t *ids = json_object_get(c, "ids"), *ids_sp = json_object_get(c, "ids_with_special");
        int32_t *got = NULL, *got_sp = NULL;
        int n = 0, n_sp = 0;
        int ok = 1;
        CHECK(loom_tokenizer_encode(t, text, len, false, &got, &n) == 0);
        CHECK(loom_tokenizer_encode(t, text, len, true, &got_sp, &n_sp) == 0);
        if (!same_ids(got, n, ids)) {
            ok = 0;
            fprintf(stderr, "%s: ids of \"%s\" differ\n", name, text);
            print_ids("got     ", got, n);
            char *exp = json_dumps(ids, JSON_COMPACT);
            fprintf(stderr, "    expected: %s\n", exp);
            free(exp);
        }
        if (!same_ids(got_sp, n_sp, ids_sp)) {
            ok = 0;
            fprintf(stderr, "%s: ids_with_special of \"%s\" differ\n", name, text);
            print_ids("got", got_sp, n_sp);
        }
        /* decode the oracle's ids (not ours), so decode is checked on its own */
        size_t ne = json_array_size(ids);
        int32_t *exp_ids = malloc((ne + 1) * sizeof(int32_t));
        for (size_t k = 0; k < ne; k++) exp_ids[k] = (int32_t)json_integer_value(json_array_get(ids, k));
        char *dec = NULL, *dec_skip = NULL;
        size_t dl = 0, dsl = 0;
        CHECK(loom_tokenizer_decode(t, exp_ids, (int)ne, false, &dec, &dl) == 0);
        CHECK(loom_tokenizer_decode(t, exp_ids, (int)ne, true, &dec_skip, &dsl) == 0);
        json_t *d1 = json_object_get(c, "decoded"), *d2 = json_object_get(c, "decoded_skip_special");
        if (!dec || dl != json_string_length(d1) || memcmp(dec, json_string_value(d1), dl)) {
            ok = 0;
            fprintf(stderr, "%s: decode of \"%s\" gave \"%s\", expected \"%s\"\n", name, text, dec ? dec : "(null)",
                    json_string_value(d1));
        }
        if (!dec_skip || dsl != json_string_length(d2) || memcmp(dec_skip, json_string_value(d2), dsl)) {
            ok = 0;
            fprintf(stderr, "%s: decode (skip special) of \"%s\" gave \"%s\", expected \"%s\"\n", name, text,
                    dec_skip ? dec_skip : "(null)", json_string_value(d2));
        }
        CHECK_MSG(ok, "%s case %zu", name, i);
        pass += ok;
        total++;
        free(got);
        free(got_sp);
        free(exp_ids);
        free(dec);
        free(dec_skip);
    }
    printf("%-36s %d/%d oracle cases identical (vocab %d, loaded in %.0f ms)\n", name, pass, total,
           loom_tokenizer_vocab_size(t), dt * 1e3);
    loom_tokenizer_free(t);
}

int main(void)
{
    json_error_t err;
    json_t *o = json_load_file(test_shared("oracles/tokenizers/hf_tokenizers.json"), 0, &err);
    json_t *o2 = json_load_file(test_shared("oracles/tokenizers/hf_tokenizers_stories260K.json"), 0, &err);
    if (!o || !o2) test_skip("the tokenizer oracles are not in LOOM_SHARED");
    static const char *folders[] = {"qwen2.5-instruct", "qwen3", "llama3", "mistral-7b-v0.1_mixtral-8x7b-v0.1"};
    for (size_t i = 0; i < sizeof(folders) / sizeof(folders[0]); i++) {
        char dir[256];
        snprintf(dir, sizeof(dir), "tokenizers/%s", folders[i]);
        json_t *cases = json_object_get(json_object_get(o, folders[i]), "encode");
        CHECK_MSG(json_array_size(cases) > 0, "no oracle cases for %s", folders[i]);
        run(dir, cases, folders[i]);
    }
    json_t *cases = json_object_get(json_object_get(o2, "stories260K"), "encode");
    CHECK(json_array_size(cases) > 0);
    run("models/stories260K", cases, "stories260K");
    json_decref(o);
    json_decref(o2);
    return test_report();
}
