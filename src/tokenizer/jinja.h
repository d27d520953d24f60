/*
 * jinja.h: a Jinja2 interpreter for chat templates. It renders what jinja2 3.1 renders in the environment
 * transformers' apply_chat_template builds (ImmutableSandboxedEnvironment, trim_blocks and lstrip_blocks
 * on, the loopcontrols and `generation` extensions, transformers' tojson / raise_exception / strftime_now),
 * byte for byte: Python's semantics for values (str() and repr(), float repr, slicing by code point,
 * markupsafe.Markup from |safe and |escape), jinja2's scoping, Undefined and whitespace rules.
 *
 * Not supported: extends/include/import/block (no loader), autoescape, line statements, i18n. Integers are
 * int64 (Python's are unbounded): an overflow is an error.
 *
 * A parsed template is immutable and may be rendered from many threads at once. Every failure (syntax,
 * runtime, raise_exception(), a limit) is LOOM_EINVAL with a message that names the template line.
 */
#ifndef LOOM_JINJA_H
#define LOOM_JINJA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loom_jinja_template;

/* Lexer options. transformers: trim_blocks and lstrip_blocks on, keep_trailing_newline off. */
struct loom_jinja_options {
    bool trim_blocks;           /* drop the first newline after a block tag */
    bool lstrip_blocks;         /* strip spaces and tabs before a block tag at the start of a line */
    bool keep_trailing_newline; /* keep one trailing newline of the source (jinja2 drops it) */
};
void loom_jinja_options_default(struct loom_jinja_options *o);

/* Bounds that make every render finish; 0 in a field means its default. */
struct loom_jinja_limits {
    size_t max_output;  /* bytes of rendered text, also of any captured block (default 32 MiB) */
    size_t max_memory;  /* bytes one render may allocate for values (default 256 MiB) */
    uint64_t max_steps; /* evaluated nodes plus work in builtins (default 50 million) */
    int max_depth;      /* nesting of evaluation, macro recursion included (default 400) */
};

/* Parses src (len bytes, UTF-8). opts NULL: transformers' options. *out is freed with loom_jinja_free. */
int loom_jinja_parse(const char *src, size_t len, const struct loom_jinja_options *opts,
                     struct loom_jinja_template **out);
void loom_jinja_free(struct loom_jinja_template *t);

/* Renders with the variables of `vars` (a JSON object, or NULL). now_unix: what strftime_now() reads as
 * the local time (0: the real clock). limits NULL: the defaults. *out is a new NUL-terminated string
 * (caller frees) of *out_len bytes (the text may hold NUL bytes if the data does). */
int loom_jinja_render(const struct loom_jinja_template *t, json_t *vars, long long now_unix,
                      const struct loom_jinja_limits *limits, char **out, size_t *out_len);

/* Parse and render in one call (tests, tools). */
int loom_jinja_render_string(const char *src, json_t *vars, char **out, size_t *out_len);

#endif
