// chat.test.mjs: /v1/chat/completions on ../shared/models/qwen2-tiny-151k (random weights, the real
// Qwen2 vocabulary size) served with --tokenizer ../shared/tokenizers/qwen2.5-instruct (the real
// vocabulary and chat template), through the official openai client: prompts equal to what
// transformers' apply_chat_template + tokenizer produce (the shared oracle), streaming and not,
// role-first chunks, usage, logprobs (chat style), n, seed, stop, max_tokens / max_completion_tokens,
// tools, and the fields loom rejects.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QWEN, QWEN_TOKENIZER, SHARED, startServer, stopServer, client, post, generate, sse } from './helpers.mjs';
import OpenAI from 'openai';

let server, openai;
const MODEL = 'qwen2-tiny-151k';
const oracle = JSON.parse(readFileSync(join(SHARED, 'oracles/tokenizers/hf_tokenizers.json'), 'utf8'))[
  'qwen2.5-instruct'].chat['tokenizer_config.json'];
const hello = [{ role: 'user', content: 'Hello!' }];

before(async () => {
  server = await startServer(QWEN, ['--tokenizer', QWEN_TOKENIZER]);
  openai = client(server);
});

after(async () => {
  const code = await stopServer(server);
  assert.equal(code, 0, `loom serve exit status on SIGTERM; log:\n${server.log.slice(-3000)}`);
});

test('the rendered chat prompt tokenizes exactly as transformers does (/tokenize with messages)', async () => {
  for (const c of oracle) {
    const r = await post(server, '/tokenize', { model: MODEL, ...c.conversation });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json.tokens, c.ids, JSON.stringify(c.conversation).slice(0, 80));
  }
  const noGen = await post(server, '/tokenize', { messages: hello, add_generation_prompt: false });
  assert.equal(noGen.json.count, oracle[0].ids.length - 3); // without "<|im_start|>assistant\n"
});

test('a chat completion: message, usage, finish reason; same tokens as `loom generate` on the prompt ids', async () => {
  const r = await openai.chat.completions.create({
    model: MODEL, messages: hello, max_tokens: 12, temperature: 0, logprobs: true, return_tokens_as_token_ids: true,
  });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-[0-9a-f]{32}$/);
  assert.equal(r.model, MODEL);
  assert.equal(r.choices.length, 1);
  const ch = r.choices[0];
  assert.equal(ch.index, 0);
  assert.equal(ch.message.role, 'assistant');
  assert.equal(typeof ch.message.content, 'string');
  assert.equal(r.usage.prompt_tokens, oracle[0].ids.length);
  const ids = ch.logprobs.content.map((e) => Number(e.token.replace('token_id:', '')));
  assert.equal(r.usage.completion_tokens, ids.length);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + ids.length);
  const [g] = await generate(QWEN, ['--tokenizer', QWEN_TOKENIZER, '--prompt-ids', oracle[0].ids.join(','),
    '--max-tokens', '12', '--temperature', '0']);
  assert.deepEqual(ids, g.token_ids);
  assert.equal(ch.finish_reason, g.finish_reason);
  if (typeof g.text === 'string') assert.equal(ch.message.content, g.text);
});

test('streaming: the role first, then content deltas that add up to the one-shot answer, usage, [DONE]', async () => {
  const req = { model: MODEL, messages: hello, max_tokens: 16, temperature: 0 };
  const whole = await openai.chat.completions.create(req);
  const stream = await openai.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(chunks[0].choices[0].finish_reason, null);
  const usage = chunks.at(-1);
  assert.equal(usage.choices.length, 0);
  assert.deepEqual(usage.usage.completion_tokens, whole.usage.completion_tokens);
  assert.deepEqual(usage.usage.prompt_tokens, whole.usage.prompt_tokens);
  const body = chunks.slice(1, -1);
  assert.ok(body.length >= 1);
  assert.ok(body.every((c) => c.id === chunks[0].id && c.created === chunks[0].created));
  assert.ok(body.slice(0, -1).every((c) => c.choices[0].finish_reason === null));
  assert.equal(body.at(-1).choices[0].finish_reason, whole.choices[0].finish_reason);
  assert.equal(body.map((c) => c.choices[0].delta.content ?? '').join(''), whole.choices[0].message.content);
  const raw = await sse(server, '/v1/chat/completions', { ...req, stream: true });
  assert.equal(raw.events.at(-1), 'DONE');
});

test('logprobs (chat style): token, logprob, bytes, top_logprobs; tokens add up to the content', async () => {
  const r = await openai.chat.completions.create({
    model: MODEL, messages: hello, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 3,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  assert.equal(r.choices[0].logprobs.refusal, null);
  let text = '';
  for (const e of content) {
    assert.equal(typeof e.token, 'string');
    assert.ok(e.logprob <= 0);
    if (!e.token.includes('\ufffd')) assert.deepEqual(e.bytes, [...Buffer.from(e.token, 'utf8')]);
    assert.equal(e.top_logprobs.length, 3);
    assert.ok(Math.abs(e.top_logprobs[0].logprob - e.logprob) < 1e-6, 'greedy takes the best');
    for (let k = 1; k < 3; k++) assert.ok(e.top_logprobs[k].logprob <= e.top_logprobs[k - 1].logprob);
    text += e.token;
  }
  if (!r.choices[0].message.content.includes('\ufffd')) assert.equal(text, r.choices[0].message.content);
  const none = await openai.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 2 });
  assert.equal(none.choices[0].logprobs, null);
});

test('max_tokens, max_completion_tokens (wins), n with a seed, stop strings', async () => {
  const a = await openai.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 3, temperature: 0 });
  assert.equal(a.usage.completion_tokens, 3);
  assert.equal(a.choices[0].finish_reason, 'length');
  const b = await openai.chat.completions.create({
    model: MODEL, messages: hello, max_tokens: 3, max_completion_tokens: 5, temperature: 0,
  });
  assert.equal(b.usage.completion_tokens, 5);
  const req = { model: MODEL, messages: hello, max_tokens: 10, temperature: 1, seed: 99, n: 3 };
  const n1 = await openai.chat.completions.create(req);
  const n2 = await openai.chat.completions.create(req);
  assert.deepEqual(n1.choices.map((c) => c.index), [0, 1, 2]);
  assert.deepEqual(n1.choices.map((c) => c.message.content), n2.choices.map((c) => c.message.content));
  assert.ok(new Set(n1.choices.map((c) => c.message.content)).size > 1);
  assert.equal(n1.usage.prompt_tokens, oracle[0].ids.length);
  // a stop string taken from the greedy text
  const g = await openai.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 24, temperature: 0 });
  const text = g.choices[0].message.content;
  const cut = [...text].slice(3, 5).join('');
  if (cut.trim() && !cut.includes('\ufffd')) {
    const s = await openai.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 24, temperature: 0, stop: [cut] });
    assert.equal(s.choices[0].finish_reason, 'stop');
    assert.equal(s.choices[0].message.content, text.slice(0, text.indexOf(cut)));
  }
  // n > 1 streaming: every index gets its role chunk and its finish
  const st = await openai.chat.completions.create({ ...req, stream: true });
  const roles = new Set(), finished = new Set(), texts = ['', '', ''];
  for await (const c of st) {
    const ch = c.choices[0];
    if (ch.delta.role) roles.add(ch.index);
    texts[ch.index] += ch.delta.content ?? '';
    if (ch.finish_reason) finished.add(ch.index);
  }
  assert.equal(roles.size, 3);
  assert.equal(finished.size, 3);
  assert.deepEqual(texts, n1.choices.map((c) => c.message.content));
});

test('tools reach the template; vLLM extras accepted; unsupported features rejected clearly', async () => {
  const withTools = oracle[3].conversation;
  const r = await openai.chat.completions.create({ model: MODEL, ...withTools, tool_choice: 'auto', max_tokens: 2 });
  assert.equal(r.usage.prompt_tokens, oracle[3].ids.length);
  const extras = await openai.chat.completions.create({
    model: MODEL, messages: hello, max_tokens: 4, temperature: 0.7, top_k: 20, min_p: 0.05, repetition_penalty: 1.1,
    ignore_eos: true, min_tokens: 4, skip_special_tokens: true, include_stop_str_in_output: false,
    chat_template_kwargs: { enable_thinking: false }, priority: 0, response_format: { type: 'text' },
    frequency_penalty: 0.5, presence_penalty: 0.5, user: 'e2e', some_unknown_field: { x: 1 }, logit_bias: { 9707: 2 },
  });
  assert.equal(extras.usage.completion_tokens, 4);
  const bad = [
    [{ response_format: { type: 'json_object' } }, /response_format/],
    [{ tool_choice: 'required', tools: withTools.tools }, /tool_choice/],
    [{ messages: [] }, /at least one message/],
    [{ messages: [{ role: 'wizard', content: 'x' }] }, /wizard/],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, /text-only/],
    [{ top_logprobs: 2 }, /logprobs/],
    [{ n: 0 }, /'n' must be at least 1/],
    [{ model: 'gpt-4o' }, /does not exist/],
  ];
  for (const [patch, re] of bad) {
    await assert.rejects(
      openai.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 2, ...patch }),
      (e) => {
        assert.ok(e instanceof OpenAI.APIError, String(e));
        assert.ok(e.status === 400 || e.status === 404, `${e.status}`);
        assert.match(e.message, re);
        return true;
      });
  }
});

test('a prompt longer than the context is a 400 naming the limit', async () => {
  const short = await startServer(QWEN, ['--tokenizer', QWEN_TOKENIZER, '--max-model-len', '64', '--port', '0']);
  try {
    const c = client(short);
    const long = [{ role: 'user', content: 'word '.repeat(100) }];
    await assert.rejects(c.chat.completions.create({ model: MODEL, messages: long }), (e) => {
      assert.equal(e.status, 400);
      assert.match(e.message, /maximum context length is 64 tokens/);
      return true;
    });
    await assert.rejects(c.chat.completions.create({ model: MODEL, messages: hello, max_tokens: 60 }), (e) => {
      assert.equal(e.status, 400);
      assert.match(e.message, /maximum context length is 64 tokens.*31 in the messages, 60 in the completion/);
      return true;
    });
    // without max_tokens the rest of the context is the limit
    const r = await c.chat.completions.create({ model: MODEL, messages: hello, temperature: 0, ignore_eos: true });
    assert.equal(r.usage.completion_tokens, 64 - 31);
    assert.equal(r.choices[0].finish_reason, 'length');
  } finally {
    await stopServer(short);
  }
});
