/*
 * chat.h: chat templates (tokenizer_config.json's `chat_template`, Jinja) rendered the way
 * transformers' apply_chat_template renders them: trim_blocks and lstrip_blocks on, the context holds
 * messages, tools, add_generation_prompt, bos_token, eos_token and any extra keyword arguments.
 * The Jinja interpreter itself is jinja.h.
 */
#ifndef LOOM_CHAT_H
#define LOOM_CHAT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct loom_chat_template;

/* From a tokenizer_config.json text: its chat_template (a string, or a list of {name, template} where
 * "default" is taken; "tool_use" when tools are given and it exists), bos_token and eos_token.
 * LOOM_ENOTFOUND if the config has no template. */
int loom_chat_template_from_config(const char *tokenizer_config_json, size_t len, struct loom_chat_template **out);
/* From a model folder: tokenizer_config.json (special tokens, chat_template), overridden by the files
 * transformers saves, chat_template.jinja ("default") and additional_chat_templates/NAME.jinja.
 * LOOM_ENOTFOUND if there is no template. */
int loom_chat_template_load(const char *dir, struct loom_chat_template **out);
/* From template source and the special token strings (nullable). */
int loom_chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                              struct loom_chat_template **out);
void loom_chat_template_free(struct loom_chat_template *t);

/* Renders. messages: array of objects; tools: array or NULL; extra: object of further template
 * kwargs (e.g. enable_thinking) or NULL. *out is a new NUL-terminated string (caller frees).
 * A template error or raise_exception() is LOOM_EINVAL with the template's message. */
int loom_chat_render(const struct loom_chat_template *t, json_t *messages, json_t *tools, bool add_generation_prompt,
                     json_t *extra, char **out, size_t *out_len);

/* Pins strftime_now() to a fixed Unix time (tests); 0 returns to the real clock. */
void loom_chat_set_time(long long unix_seconds);

#endif
