/* test_openai_request.c: request bodies -> loom_api_request (values, defaults, every 400), error
 * objects, SSE framing, UTF-8 repair and the Prometheus page. No HTTP, no engine. */
#include "server/metrics.h"
#include "server/openai.h"
#include "test.h"

static struct loom_api_request req;
static struct loom_api_error err;

static int parse(enum loom_api_kind kind, const char *body)
{
    memset(&err, 0, sizeof(err));
    return loom_api_parse(kind, body, strlen(body), &req, &err);
}

/* Expects a 400 whose message contains `needle` (and whose param is `param` when given). */
#define BAD(kind, body, prm, needle)                                                                         \
    do {                                                                                                     \
        int _rc = parse(kind, body);                                                                         \
        CHECK_MSG(_rc == -1, "accepted: %s", body);                                                          \
        if (_rc == -1) {                                                                                     \
            CHECK_EQ_INT(err.status, 400);                                                                   \
            CHECK_MSG(strstr(err.message, needle) != NULL, "'%s' lacks '%s'", err.message, needle);          \
            if (prm) CHECK_EQ_STR(err.param, (const char *)prm);                                             \
        } else {                                                                                             \
            loom_api_request_free(&req);                                                                     \
        }                                                                                                    \
    } while (0)

#define OK(kind, body)                                                                                       \
    do {                                                                                                     \
        int _rc = parse(kind, body);                                                                         \
        CHECK_MSG(_rc == 0, "rejected %s: %s", body, err.message);                                           \
    } while (0)

static void test_completions(void)
{
    OK(LOOM_API_COMPLETIONS, "{\"model\": \"m\", \"prompt\": \"Hello\"}");
    CHECK_EQ_STR(req.model, "m");
    CHECK_EQ_INT(req.n_prompts, 1);
    CHECK(req.prompts[0].text && req.prompts[0].text_len == 5);
    CHECK_EQ_INT(req.params.max_tokens, 16);
    CHECK(!req.max_tokens_set);
    CHECK_NEAR(req.params.temperature, 1.0, 0);
    CHECK_NEAR(req.params.top_p, 1.0, 0);
    CHECK_EQ_INT(req.params.n, 1);
    CHECK_EQ_INT(req.logprobs, -1);
    CHECK_EQ_INT(req.params.logprobs, -1);
    CHECK(req.add_special_tokens);
    CHECK(req.params.skip_special_tokens);
    CHECK(!req.stream);
    loom_api_request_free(&req);

    OK(LOOM_API_COMPLETIONS,
       "{\"prompt\": [1, 2, 3], \"max_tokens\": 7, \"temperature\": 0, \"top_p\": 0.5, \"top_k\": 40, "
       "\"min_p\": 0.1,"
       " \"seed\": -5, \"n\": 3, \"best_of\": 3, \"stop\": [\"a\", \"\", \"bc\"], \"echo\": true, "
       "\"logprobs\": 2,"
       " \"presence_penalty\": -2, \"frequency_penalty\": 1.5, \"repetition_penalty\": 1.1, \"ignore_eos\": "
       "true,"
       " \"min_tokens\": 2, \"stop_token_ids\": [5, 6], \"skip_special_tokens\": false,"
       " \"include_stop_str_in_output\": true, \"priority\": -3, \"logit_bias\": {\"7\": 5, \"9\": -100},"
       " \"stream\": true, \"stream_options\": {\"include_usage\": true, \"continuous_usage_stats\": true},"
       " \"user\": \"x\", \"some_unknown_field\": {\"deep\": [1]}, \"suffix\": null, "
       "\"spaces_between_special_tokens\": true}");
    CHECK(req.model == NULL);
    CHECK_EQ_INT(req.n_prompts, 1);
    CHECK_EQ_INT(req.prompts[0].n_ids, 3);
    CHECK(req.prompts[0].text == NULL);
    CHECK_EQ_INT(req.prompts[0].ids[2], 3);
    CHECK_EQ_INT(req.params.max_tokens, 7);
    CHECK(req.max_tokens_set);
    CHECK_NEAR(req.params.temperature, 0, 0);
    CHECK_NEAR(req.params.top_p, 0.5, 1e-7);
    CHECK_EQ_INT(req.params.top_k, 40);
    CHECK_NEAR(req.params.min_p, 0.1, 1e-7);
    CHECK(req.params.has_seed);
    CHECK(req.params.seed == (uint64_t)-5LL);
    CHECK_EQ_INT(req.params.n, 3);
    CHECK_EQ_INT(req.params.n_stop, 2);
    CHECK_EQ_STR(req.params.stop[0], "a");
    CHECK_EQ_STR(req.params.stop[1], "bc");
    CHECK(req.echo);
    CHECK_EQ_INT(req.logprobs, 2);
    CHECK_EQ_INT(req.params.logprobs, 2);
    CHECK_EQ_INT(req.params.prompt_logprobs, 2); /* echo + logprobs */
    CHECK_NEAR(req.params.presence_penalty, -2, 0);
    CHECK_NEAR(req.params.frequency_penalty, 1.5, 0);
    CHECK_NEAR(req.params.repetition_penalty, 1.1, 1e-6);
    CHECK(req.params.ignore_eos);
    CHECK_EQ_INT(req.params.min_tokens, 2);
    CHECK_EQ_INT(req.params.n_stop_token_ids, 2);
    CHECK_EQ_INT(req.params.stop_token_ids[1], 6);
    CHECK(!req.params.skip_special_tokens);
    CHECK(req.params.include_stop_str_in_output);
    CHECK_EQ_INT(req.params.priority, -3);
    CHECK_EQ_INT(req.params.n_logit_bias, 2);
    CHECK(req.stream && req.include_usage && req.continuous_usage);
    loom_api_request_free(&req);

    /* prompt forms */
    OK(LOOM_API_COMPLETIONS, "{\"prompt\": [\"a\", \"bb\", \"\"]}");
    CHECK_EQ_INT(req.n_prompts, 3);
    CHECK_EQ_INT((int)req.prompts[1].text_len, 2);
    loom_api_request_free(&req);
    OK(LOOM_API_COMPLETIONS, "{\"prompt\": [[1], [2, 3]]}");
    CHECK_EQ_INT(req.n_prompts, 2);
    CHECK_EQ_INT(req.prompts[1].n_ids, 2);
    loom_api_request_free(&req);
    OK(LOOM_API_COMPLETIONS,
       "{\"prompt\": \"x\", \"max_tokens\": 5.0, \"top_k\": -1}"); /* pydantic-style ints */
    CHECK_EQ_INT(req.params.max_tokens, 5);
    CHECK_EQ_INT(req.params.top_k, 0);
    loom_api_request_free(&req);
    OK(LOOM_API_COMPLETIONS,
       "{\"prompt\": \"x\", \"stop\": \"\\n\", \"best_of\": null, \"n\": null, \"logprobs\": 0}");
    CHECK_EQ_INT(req.params.n_stop, 1);
    CHECK_EQ_STR(req.params.stop[0], "\n");
    CHECK_EQ_INT(req.logprobs, 0);
    loom_api_request_free(&req);
}

static void test_completions_errors(void)
{
    const enum loom_api_kind C = LOOM_API_COMPLETIONS;
    BAD(C, "{\"prompt\": \"x\"", NULL, "not valid JSON");
    BAD(C, "", NULL, "not valid JSON");
    BAD(C, "{\"prompt\": \"\xff\xfe\"}", NULL, "not valid JSON");
    BAD(C, "{\"prompt\": \"x\"} trailing", NULL, "not valid JSON");
    BAD(C, "[1, 2]", NULL, "must be a JSON object");
    BAD(C, "{}", "prompt", "'prompt' is required");
    BAD(C, "{\"prompt\": null}", "prompt", "'prompt' is required");
    BAD(C, "{\"prompt\": 5}", "prompt", "'prompt' must be");
    BAD(C, "{\"prompt\": []}", "prompt", "empty");
    BAD(C, "{\"prompt\": [[]]}", "prompt", "empty");
    BAD(C, "{\"prompt\": [1, \"a\"]}", "prompt", "only strings");
    BAD(C, "{\"prompt\": [-1]}", "prompt", "at least 0");
    BAD(C, "{\"prompt\": [1.5]}", "prompt", "must be an integer");
    BAD(C, "{\"prompt\": [[1], [\"a\"]]}", "prompt", "array of token ids");
    BAD(C, "{\"prompt\": \"x\", \"model\": 3}", "model", "must be a string");
    BAD(C, "{\"prompt\": \"x\", \"max_tokens\": -1}", "max_tokens", "at least 1");
    BAD(C, "{\"prompt\": \"x\", \"max_tokens\": 0}", "max_tokens", "at least 1");
    BAD(C, "{\"prompt\": \"x\", \"max_tokens\": \"5\"}", "max_tokens", "must be an integer");
    BAD(C, "{\"prompt\": \"x\", \"max_tokens\": 1e30}", "max_tokens", "integer");
    BAD(C, "{\"prompt\": \"x\", \"max_tokens\": 99999999999999}", "max_tokens", "at most");
    BAD(C, "{\"prompt\": \"x\", \"max_tokens\": 999999999999999999999999}", NULL, "not valid JSON");
    BAD(C, "{\"prompt\": \"x\", \"temperature\": 2.5}", "temperature", "[0, 2]");
    BAD(C, "{\"prompt\": \"x\", \"temperature\": -0.1}", "temperature", "[0, 2]");
    BAD(C, "{\"prompt\": \"x\", \"temperature\": \"hot\"}", "temperature", "must be a number");
    BAD(C, "{\"prompt\": \"x\", \"temperature\": 1e999}", NULL, "not valid JSON");
    BAD(C, "{\"prompt\": \"x\", \"top_p\": 0}", "top_p", "(0, 1]");
    BAD(C, "{\"prompt\": \"x\", \"top_p\": 1.01}", "top_p", "(0, 1]");
    BAD(C, "{\"prompt\": \"x\", \"n\": 0}", "n", "at least 1");
    BAD(C, "{\"prompt\": \"x\", \"n\": 100000}", "n", "at most");
    BAD(C, "{\"prompt\": \"x\", \"n\": true}", "n", "must be an integer");
    BAD(C, "{\"prompt\": \"x\", \"best_of\": 2}", "best_of", "must equal");
    BAD(C, "{\"prompt\": \"x\", \"top_k\": -2}", "top_k", "at least -1");
    BAD(C, "{\"prompt\": \"x\", \"min_p\": 1.5}", "min_p", "[0, 1]");
    BAD(C, "{\"prompt\": \"x\", \"repetition_penalty\": 0}", "repetition_penalty", "(0, 2]");
    BAD(C, "{\"prompt\": \"x\", \"presence_penalty\": 3}", "presence_penalty", "[-2, 2]");
    BAD(C, "{\"prompt\": \"x\", \"frequency_penalty\": -2.5}", "frequency_penalty", "[-2, 2]");
    BAD(C, "{\"prompt\": \"x\", \"seed\": \"1\"}", "seed", "must be an integer");
    BAD(C, "{\"prompt\": \"x\", \"stop\": 5}", "stop", "string or an array");
    BAD(C, "{\"prompt\": \"x\", \"stop\": [\"a\", 1]}", "stop", "must be a string");
    BAD(C, "{\"prompt\": \"x\", \"stream\": \"yes\"}", "stream", "must be a boolean");
    BAD(C, "{\"prompt\": \"x\", \"echo\": 1}", "echo", "must be a boolean");
    BAD(C, "{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": true}}", "stream_options",
        "only allowed");
    BAD(C, "{\"prompt\": \"x\", \"stream\": true, \"stream_options\": 3}", "stream_options",
        "must be an object");
    BAD(C, "{\"prompt\": \"x\", \"logprobs\": 21}", "logprobs", "at most 20");
    BAD(C, "{\"prompt\": \"x\", \"logprobs\": true}", "logprobs", "must be an integer");
    BAD(C, "{\"prompt\": \"x\", \"suffix\": \"tail\"}", "suffix", "not supported");
    BAD(C, "{\"prompt\": \"x\", \"logit_bias\": {\"a\": 1}}", "logit_bias", "not a token id");
    BAD(C, "{\"prompt\": \"x\", \"logit_bias\": {\"1\": 101}}", "logit_bias", "[-100, 100]");
    BAD(C, "{\"prompt\": \"x\", \"logit_bias\": [1]}", "logit_bias", "must be an object");
    BAD(C, "{\"prompt\": \"x\", \"stop_token_ids\": [\"a\"]}", "stop_token_ids", "must be an integer");
    BAD(C, "{\"prompt\": \"x\", \"min_tokens\": 10, \"max_tokens\": 5}", "min_tokens", "must not exceed");
    BAD(C, "{\"prompt\": \"x\", \"use_beam_search\": true}", "use_beam_search", "not supported");
    BAD(C, "{\"prompt\": \"x\", \"guided_json\": {}}", "guided_json", "not supported");
    BAD(C, "{\"prompt\": \"x\", \"response_format\": {\"type\": \"json_object\"}}", "response_format",
        "only \"text\"");
    BAD(C, "{\"prompt\": \"x\", \"truncate_prompt_tokens\": 0}", "truncate_prompt_tokens", "at least 1");
    BAD(C, "{\"prompt\": [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\"], \"n\": 128}", "n",
        "choices");
    OK(C, "{\"prompt\": \"x\", \"response_format\": {\"type\": \"text\"}, \"use_beam_search\": false}");
    loom_api_request_free(&req);
}

static void test_chat(void)
{
    const enum loom_api_kind K = LOOM_API_CHAT;
    OK(K, "{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"be brief\"},"
          " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", "
          "\"text\": \"b\"}]},"
          " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"c1\", \"type\": "
          "\"function\","
          "   \"function\": {\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}}]},"
          " {\"role\": \"tool\", \"content\": \"42\", \"tool_call_id\": \"c1\"}],"
          " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {}}}],"
          " \"tool_choice\": \"auto\", \"max_tokens\": 9, \"max_completion_tokens\": 11, \"logprobs\": true,"
          " \"top_logprobs\": 3, \"chat_template_kwargs\": {\"enable_thinking\": false}, "
          "\"add_generation_prompt\": true}");
    CHECK_EQ_INT((int)json_array_size(req.messages), 4);
    json_t *m1 = json_array_get(req.messages, 1);
    CHECK_EQ_STR(json_string_value(json_object_get(m1, "content")), "a\nb");
    json_t *call = json_array_get(json_object_get(json_array_get(req.messages, 2), "tool_calls"), 0);
    json_t *args = json_object_get(json_object_get(call, "function"), "arguments");
    CHECK(json_is_object(args) && json_integer_value(json_object_get(args, "x")) == 1);
    CHECK(req.tools && json_array_size(req.tools) == 1);
    CHECK_EQ_INT(req.params.max_tokens, 11); /* max_completion_tokens wins */
    CHECK_EQ_INT(req.logprobs, 3);
    CHECK(json_is_false(json_object_get(req.template_kwargs, "enable_thinking")));
    CHECK(req.add_generation_prompt);
    CHECK(!req.add_special_tokens);
    loom_api_request_free(&req);

    OK(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": true}");
    CHECK_EQ_INT(req.logprobs, 0);
    CHECK(!req.max_tokens_set);
    loom_api_request_free(&req);
    OK(K,
       "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": false, \"top_logprobs\": 0,"
       " \"response_format\": {\"type\": \"text\"}, \"tool_choice\": \"none\", \"parallel_tool_calls\": "
       "false}");
    CHECK_EQ_INT(req.logprobs, -1);
    loom_api_request_free(&req);
    OK(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": "
          "\"Sure\"}],"
          " \"continue_final_message\": true, \"add_generation_prompt\": false}");
    CHECK(req.continue_final_message);
    loom_api_request_free(&req);

    BAD(K, "{\"messages\": []}", "messages", "at least one");
    BAD(K, "{}", "messages", "required");
    BAD(K, "{\"messages\": \"hi\"}", "messages", "must be an array");
    BAD(K, "{\"messages\": [\"hi\"]}", "messages", "must be an object");
    BAD(K, "{\"messages\": [{\"content\": \"hi\"}]}", "messages", "role' must be a string");
    BAD(K, "{\"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}", "messages", "'wizard'");
    BAD(K, "{\"messages\": [{\"role\": \"user\"}]}", "messages", "content' is required");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "messages", "string or an array");
    BAD(K,
        "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\", \"image_url\": {}}]}]}",
        "messages", "text-only");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_logprobs\": 2}", "top_logprobs",
        "needs 'logprobs'");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": 2}", "logprobs",
        "must be a boolean");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": [{\"type\": \"code\"}]}",
        "tools", "must be");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tool_choice\": \"required\"}",
        "tool_choice", "guided decoding");
    BAD(K,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tool_choice\": {\"type\": "
        "\"function\"}}",
        "tool_choice", "guided decoding");
    BAD(K,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"response_format\": {\"type\": "
        "\"json_schema\"}}",
        "response_format", "not supported");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chat_template\": \"{{ x }}\"}",
        "chat_template", "not accepted");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"chat_template_kwargs\": []}",
        "chat_template_kwargs", "must be an object");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"continue_final_message\": true}",
        "continue_final_message", "cannot both");
    BAD(K,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"continue_final_message\": true,"
        " \"add_generation_prompt\": false}",
        "continue_final_message", "assistant");
    BAD(K, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": -3}",
        "max_completion_tokens", "at least 1");
}

static void test_tokenize(void)
{
    OK(LOOM_API_TOKENIZE, "{\"prompt\": \"hello\", \"return_token_strs\": true}");
    CHECK(req.add_special_tokens && req.return_token_strs && req.n_prompts == 1);
    loom_api_request_free(&req);
    OK(LOOM_API_TOKENIZE, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}");
    CHECK(!req.add_special_tokens && req.messages && req.add_generation_prompt);
    loom_api_request_free(&req);
    BAD(LOOM_API_TOKENIZE, "{\"prompt\": [1, 2]}", "prompt", "needs 'prompt'");
    OK(LOOM_API_DETOKENIZE, "{\"tokens\": [1, 2, 3]}");
    CHECK_EQ_INT(req.n_tokens, 3);
    loom_api_request_free(&req);
    OK(LOOM_API_DETOKENIZE, "{\"tokens\": []}");
    loom_api_request_free(&req);
    BAD(LOOM_API_DETOKENIZE, "{\"tokens\": \"abc\"}", "tokens", "array of token ids");
    BAD(LOOM_API_DETOKENIZE, "{\"tokens\": [1, -2]}", "tokens", "at least 0");
}

static void test_error_json(void)
{
    struct loom_api_error e;
    loom_api_error_set(&e, 400, "temperature", "'temperature' must be in [0, 2], got %g", 3.0);
    char *s = loom_api_error_json(&e);
    json_t *j = json_loads(s, 0, NULL);
    CHECK(j != NULL);
    json_t *o = json_object_get(j, "error");
    CHECK_EQ_STR(json_string_value(json_object_get(o, "message")), "'temperature' must be in [0, 2], got 3");
    CHECK_EQ_STR(json_string_value(json_object_get(o, "type")), "invalid_request_error");
    CHECK_EQ_STR(json_string_value(json_object_get(o, "param")), "temperature");
    CHECK(json_is_null(json_object_get(o, "code")));
    json_decref(j);
    free(s);
    loom_api_error_set(&e, 503, NULL, "busy \xff");
    e.code = "overloaded";
    s = loom_api_error_json(&e);
    j = json_loads(s, 0, NULL);
    o = json_object_get(j, "error");
    CHECK_EQ_STR(json_string_value(json_object_get(o, "type")), "server_error");
    CHECK(json_is_null(json_object_get(o, "param")));
    CHECK_EQ_STR(json_string_value(json_object_get(o, "code")), "overloaded");
    CHECK_EQ_STR(json_string_value(json_object_get(o, "message")), "busy \xEF\xBF\xBD");
    json_decref(j);
    free(s);
    int32_t ids[] = {0, 5, 10};
    CHECK_EQ_INT(loom_api_check_ids(ids, 3, 11, "prompt", &e), 0);
    CHECK_EQ_INT(loom_api_check_ids(ids, 3, 10, "prompt", &e), -1);
    CHECK(strstr(e.message, "token id 10") != NULL);
}

static void test_sse_and_utf8(void)
{
    struct loom_buf b = {0};
    json_t *j = json_pack("{s:s, s:[{s:i, s:s}]}", "id", "cmpl-1", "choices", "index", 0, "text", "a\"b\n");
    loom_sse_append_json(&b, j);
    CHECK_EQ_STR(b.data, "data: {\"id\":\"cmpl-1\",\"choices\":[{\"index\":0,\"text\":\"a\\\"b\\n\"}]}\n\n");
    loom_sse_append_done(&b);
    CHECK(b.len > 14 && !strcmp(b.data + b.len - 14, "data: [DONE]\n\n"));
    json_decref(j);
    /* a big event grows the buffer */
    char *big = malloc(100000);
    memset(big, 'x', 99999);
    big[99999] = 0;
    j = json_pack("{s:s}", "t", big);
    size_t before = b.len;
    loom_sse_append_json(&b, j);
    CHECK_EQ_INT((long long)(b.len - before), (long long)(6 + 6 + 99999 + 2 + 2));
    CHECK(!strncmp(b.data + b.len - 4, "\"}\n\n", 4));
    json_decref(j);
    free(big);
    loom_buf_free(&b);

    size_t n;
    char *r = loom_api_utf8_repair("ok \xc3\xa9 \xe2\x82 \xf0\x9f\x98\x80 \xed\xa0\x80 \xc0\xaf", 20, &n);
    CHECK_EQ_STR(r,
                 "ok \xc3\xa9 \xEF\xBF\xBD\xEF\xBF\xBD \xf0\x9f\x98\x80 \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD "
                 "\xEF\xBF\xBD\xEF\xBF\xBD");
    free(r);
    json_t *s = loom_api_json_string("a\x80z", 3);
    CHECK_EQ_STR(json_string_value(s), "a\xEF\xBF\xBDz");
    json_decref(s);
    CHECK_EQ_INT((int)loom_api_utf8_chars("h\xc3\xa9llo \xf0\x9f\x98\x80", 11), 7);

    json_t *u = loom_api_usage_json(5, 7, 2);
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "total_tokens")), 12);
    CHECK_EQ_INT(
        json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens")), 2);
    json_decref(u);

    char id1[64], id2[64];
    loom_api_make_id(id1, sizeof(id1), "chatcmpl-");
    loom_api_make_id(id2, sizeof(id2), "chatcmpl-");
    CHECK_EQ_INT((int)strlen(id1), 9 + 32);
    CHECK(strcmp(id1, id2) != 0);
}

static void test_metrics(void)
{
    struct loom_metrics m;
    loom_metrics_init(&m, "my \"model\"");
    loom_metrics_observe_ttft(&m, 0.003);
    loom_metrics_observe_ttft(&m, 0.5);
    loom_metrics_observe_itl(&m, 0.010, 2); /* two tokens of 5 ms */
    loom_metrics_observe_finished(&m, LOOM_FINISH_LENGTH, 1.0, 0.1, 10);
    loom_metrics_count_http(&m, 200);
    loom_metrics_count_http(&m, 418);
    struct loom_engine_stats st;
    memset(&st, 0, sizeof(st));
    st.running = 3;
    st.waiting = 1;
    st.kv_usage = 0.25;
    st.prefix_cache_queries = 100;
    st.prefix_cache_hits = 40;
    st.prompt_tokens_total = 77;
    st.generation_tokens_total = 88;
    st.num_kv_blocks = 64;
    st.free_kv_blocks = 48;
    size_t len;
    char *t = loom_metrics_render(&m, &st, &len);
    CHECK(strlen(t) == len);
    CHECK(strstr(t, "vllm:num_requests_running{model_name=\"my \\\"model\\\"\"} 3\n") != NULL);
    CHECK(strstr(t, "vllm:num_requests_waiting{model_name=\"my \\\"model\\\"\"} 1\n") != NULL);
    CHECK(strstr(t, "vllm:kv_cache_usage_perc{model_name=\"my \\\"model\\\"\"} 0.25\n") != NULL);
    CHECK(strstr(t, "# TYPE vllm:prompt_tokens_total counter\n") != NULL);
    CHECK(strstr(t, "vllm:prompt_tokens_total{model_name=\"my \\\"model\\\"\"} 77\n") != NULL);
    CHECK(strstr(t, "vllm:generation_tokens_total{model_name=\"my \\\"model\\\"\"} 88\n") != NULL);
    CHECK(strstr(t, "vllm:prefix_cache_hits_total{model_name=\"my \\\"model\\\"\"} 40\n") != NULL);
    CHECK(strstr(t, "loom:prefix_cache_hit_rate{model_name=\"my \\\"model\\\"\"} 0.4") != NULL);
    CHECK(strstr(t, "loom:kv_blocks_free{model_name=\"my \\\"model\\\"\"} 48\n") != NULL);
    CHECK(strstr(t, "# TYPE vllm:time_to_first_token_seconds histogram\n") != NULL);
    CHECK(
        strstr(t,
               "vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"0.001\"} 0\n") !=
        NULL);
    CHECK(
        strstr(t,
               "vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"0.005\"} 1\n") !=
        NULL);
    CHECK(
        strstr(t,
               "vllm:time_to_first_token_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"+Inf\"} 2\n") !=
        NULL);
    CHECK(strstr(t, "vllm:time_to_first_token_seconds_count{model_name=\"my \\\"model\\\"\"} 2\n") != NULL);
    CHECK(strstr(t, "vllm:inter_token_latency_seconds_count{model_name=\"my \\\"model\\\"\"} 2\n") != NULL);
    CHECK(
        strstr(t,
               "vllm:inter_token_latency_seconds_bucket{model_name=\"my \\\"model\\\"\",le=\"0.005\"} 2\n") !=
        NULL);
    CHECK(strstr(
              t,
              "vllm:request_success_total{model_name=\"my \\\"model\\\"\",finished_reason=\"length\"} 1\n") !=
          NULL);
    CHECK(strstr(t, "loom:http_responses_total{code=\"200\"} 1\n") != NULL);
    CHECK(strstr(t, "loom:http_responses_total{code=\"other\"} 1\n") != NULL);
    /* every non-comment line is `name{labels} value` */
    int lines = 0, bad = 0;
    for (char *p = t; *p;) {
        char *e = strchr(p, '\n');
        if (!e) {
            bad++;
            break;
        }
        if (*p != '#') {
            lines++;
            char *brace = memchr(p, '{', (size_t)(e - p)), *close = memchr(p, '}', (size_t)(e - p));
            if (!brace || !close || close[1] != ' ') bad++;
        }
        p = e + 1;
    }
    CHECK(lines > 50);
    CHECK_EQ_INT(bad, 0);
    free(t);
    t = loom_metrics_render(&m, NULL, NULL); /* no engine: zeros */
    CHECK(strstr(t, "vllm:num_requests_running{model_name=\"my \\\"model\\\"\"} 0\n") != NULL);
    free(t);
    loom_metrics_destroy(&m);
}

int main(void)
{
    test_completions();
    test_completions_errors();
    test_chat();
    test_tokenize();
    test_error_json();
    test_sse_and_utf8();
    test_metrics();
    return test_report();
}
