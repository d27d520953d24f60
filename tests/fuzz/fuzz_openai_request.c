/*
 * fuzz_openai_request.c: libFuzzer target for the OpenAI request parser (server/openai.h). The first
 * byte picks the endpoint (completions, chat, tokenize, detokenize), the rest is the body. Every body
 * must parse or fail with a 4xx error object that is itself valid JSON; a parsed request must hold
 * values inside the ranges the parser promises. The SSE and UTF-8 helpers see the same bytes.
 */
#include "core/error.h"
#include "server/openai.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    enum loom_api_kind kind = (enum loom_api_kind)(data[0] % 4);
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    struct loom_api_request r;
    struct loom_api_error err;
    memset(&err, 0, sizeof(err));
    if (loom_api_parse(kind, body, len, &r, &err) != 0) {
        LOOM_ASSERT(err.status >= 400 && err.status < 500);
        char *e = loom_api_error_json(&err);
        json_t *j = json_loads(e, 0, NULL);
        LOOM_ASSERT(j && json_is_object(json_object_get(j, "error")));
        json_decref(j);
        free(e);
    } else {
        const struct loom_sampling_params *p = &r.params;
        LOOM_ASSERT(p->n >= 1 && p->n <= 128);
        LOOM_ASSERT(p->temperature >= 0 && p->temperature <= 2);
        LOOM_ASSERT(p->top_p > 0 && p->top_p <= 1);
        LOOM_ASSERT(p->max_tokens >= 1);
        LOOM_ASSERT(p->n_stop >= 0 && (p->n_stop == 0 || p->stop));
        for (int i = 0; i < p->n_stop; i++) LOOM_ASSERT(p->stop[i] && p->stop[i][0]);
        for (int i = 0; i < p->n_stop_token_ids; i++) LOOM_ASSERT(p->stop_token_ids[i] >= 0);
        for (int i = 0; i < p->n_logit_bias; i++)
            LOOM_ASSERT(p->logit_bias[i].bias >= -100 && p->logit_bias[i].bias <= 100);
        LOOM_ASSERT(r.logprobs >= -1 && r.logprobs <= 20);
        if (kind == LOOM_API_COMPLETIONS) LOOM_ASSERT(r.n_prompts >= 1 && r.prompts);
        for (int i = 0; i < r.n_prompts; i++) {
            const struct loom_api_prompt *pr = &r.prompts[i];
            LOOM_ASSERT(pr->text || pr->n_ids >= 0);
            for (int k = 0; k < pr->n_ids; k++) LOOM_ASSERT(pr->ids[k] >= 0);
        }
        if (kind == LOOM_API_CHAT) {
            LOOM_ASSERT(json_array_size(r.messages) >= 1);
            /* what the chat template will see: every message has a string role */
            size_t i;
            json_t *m;
            json_array_foreach(r.messages, i, m) LOOM_ASSERT(json_is_string(json_object_get(m, "role")));
        }
        struct loom_buf b = {0};
        loom_sse_append_json(&b, r.root);
        LOOM_ASSERT(b.len > 8 && !memcmp(b.data, "data: ", 6) && !memcmp(b.data + b.len - 2, "\n\n", 2));
        loom_buf_free(&b);
        loom_api_request_free(&r);
    }
    size_t n;
    char *fixed = loom_api_utf8_repair(body, len, &n);
    json_t *s = json_stringn(fixed, n);
    LOOM_ASSERT(s != NULL);
    json_decref(s);
    free(fixed);
    return 0;
}
