/*
 * fuzz_jinja.c: libFuzzer target over the Jinja interpreter. The input is a template: it is parsed and,
 * when it parses, rendered with a small fixed chat context (a system, user and assistant turn with a tool
 * call, one tool, the special tokens) under small limits, so that a slow input ends in a limit error and
 * not in libFuzzer's timeout. Seeds: the templates of ../shared/chat_templates (fuzz_jinja.seeds) and the
 * small feature templates in corpus/fuzz_jinja/.
 */
#include "tokenizer/jinja.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

static const char *context_json =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"What's the weather in Paris? <b>&</b> \\u00e9\"},"
    " {\"role\": \"assistant\", \"content\": \"<think>\\nhm\\n</think>\\n\\nLet me check.\", \"tool_calls\": [{\"id\":"
    " \"abcdefghi\", \"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\":"
    " \"Paris\", \"days\": [1, 2.5, null, true]}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"abcdefghi\", \"content\": \"22\"},"
    " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"thanks\"}]}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the weather\","
    " \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}],"
    " \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"documents\": null,"
    " \"enable_thinking\": false}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static json_t *ctx;
    if (!ctx) ctx = json_loads(context_json, 0, NULL);
    struct loom_jinja_template *t;
    if (loom_jinja_parse((const char *)data, size, NULL, &t) != 0) return 0;
    struct loom_jinja_limits lim = {
        .max_output = 1 << 20, .max_memory = 64 << 20, .max_steps = 300000, .max_depth = 300};
    char *out;
    size_t n;
    if (loom_jinja_render(t, ctx, 1795608000LL, &lim, &out, &n) == 0) free(out);
    loom_jinja_free(t);
    return 0;
}
