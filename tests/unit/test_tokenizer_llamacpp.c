/*
 * test_tokenizer_llamacpp.c: llama.cpp's tokenizer test vectors (../shared/tokenizers/llama.cpp-vocab-tests:
 * *.gguf.inp holds inputs each followed by a line "__ggml_vocab_test__", *.gguf.out the ids of each,
 * space-separated, without BOS) against the Hugging Face tokenizers they were made from:
 * qwen2 -> qwen2.5-instruct, llama-bpe -> llama3. Every input must give identical ids.
 * llama-spm is not used: its ids are those of Llama 2's vocabulary, and the oracles README says
 * Mistral v1's ids differ (its own ids are pinned by hf_tokenizers.json instead).
 */
#include "core/error.h"
#include "core/util.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

#define SEP "\n__ggml_vocab_test__\n"

static void run(const char *vocab, const char *tok_dir)
{
    char inp[256], outp[256];
    snprintf(inp, sizeof(inp), "tokenizers/llama.cpp-vocab-tests/ggml-vocab-%s.gguf.inp", vocab);
    snprintf(outp, sizeof(outp), "tokenizers/llama.cpp-vocab-tests/ggml-vocab-%s.gguf.out", vocab);
    char *in = NULL, *out = NULL;
    size_t in_len, out_len;
    int rc = loom_read_file(test_shared(inp), &in, &in_len);
    CHECK_MSG(rc == 0, "%s", loom_last_error());
    rc |= loom_read_file(test_shared(outp), &out, &out_len);
    CHECK_MSG(rc == 0, "%s", loom_last_error());
    struct loom_tokenizer *t = NULL;
    if (!rc) rc = loom_tokenizer_load(test_shared(tok_dir), &t);
    CHECK_MSG(rc == 0, "%s", loom_last_error());
    if (rc) {
        free(in);
        free(out);
        return;
    }
    int pass = 0, total = 0;
    char *p = in, *end = in + in_len, *line = out;
    for (;;) {
        char *sep = strstr(p, SEP);
        if (!sep) break;
        char *nl = strchr(line, '\n');
        CHECK_MSG(nl != NULL, "%s: fewer output lines than inputs", vocab);
        if (!nl) break;
        *nl = 0;
        int32_t *want = NULL;
        int n_want = 0;
        CHECK(loom_parse_int_list(line, &want, &n_want) == 0);
        int32_t *got = NULL;
        int n_got = 0;
        CHECK(loom_tokenizer_encode(t, p, (size_t)(sep - p), false, &got, &n_got) == 0);
        bool ok = n_got == n_want && (n_got == 0 || !memcmp(got, want, (size_t)n_got * sizeof(int32_t)));
        if (!ok) {
            fprintf(stderr, "%s input %d \"%.*s\":\n  got ", vocab, total, (int)(sep - p), p);
            for (int i = 0; i < n_got; i++) fprintf(stderr, " %d", got[i]);
            fprintf(stderr, "\n  want %s\n", line);
        }
        CHECK_MSG(ok, "%s input %d", vocab, total);
        pass += ok;
        total++;
        free(want);
        free(got);
        p = sep + strlen(SEP);
        line = nl + 1;
        if (p >= end) break;
    }
    CHECK_MSG(total >= 40, "%s: only %d inputs parsed", vocab, total);
    printf("llama.cpp %-10s -> %-18s %d/%d identical\n", vocab, tok_dir + strlen("tokenizers/"), pass, total);
    loom_tokenizer_free(t);
    free(in);
    free(out);
}

int main(void)
{
    if (!loom_file_exists(test_shared("tokenizers/llama.cpp-vocab-tests")))
        test_skip("llama.cpp-vocab-tests not in LOOM_SHARED");
    run("qwen2", "tokenizers/qwen2.5-instruct");
    run("llama-bpe", "tokenizers/llama3");
    return test_report();
}
