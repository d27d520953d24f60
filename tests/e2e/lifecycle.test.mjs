// lifecycle.test.mjs: SIGTERM drains (no new connections, requests in flight finish, exit 0); a
// second signal aborts what is left at once (exit 0); a bad command line fails fast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { LOOM, STORIES, QWEN, QWEN_TOKENIZER, startServer, client, get, waitMetrics } from './helpers.mjs';

function exited(server) {
  if (server.exited) return Promise.resolve(server.exited.code);
  return new Promise((resolve) => server.proc.once('exit', (code) => resolve(code)));
}

test('SIGTERM lets requests in flight finish, refuses new connections, exits 0', { timeout: 60000 }, async () => {
  const s = await startServer(QWEN, ['--tokenizer', QWEN_TOKENIZER]);
  try {
    const openai = client(s);
    const long = openai.completions.create({ model: 'qwen2-tiny-151k', prompt: 'Go on', max_tokens: 400, ignore_eos: true });
    const stream = await openai.completions.create(
      { model: 'qwen2-tiny-151k', prompt: 'And on', max_tokens: 300, ignore_eos: true, stream: true });
    // both requests are in the engine before the signal
    const m = await waitMetrics(s, (x) => x.get('vllm:num_requests_running{model_name="qwen2-tiny-151k"}') === 2, 20000);
    assert.equal(m.get('vllm:num_requests_running{model_name="qwen2-tiny-151k"}'), 2);
    s.proc.kill('SIGTERM');
    let streamed = 0, fin = null;
    for await (const c of stream) {
      streamed++;
      fin = c.choices[0]?.finish_reason ?? fin;
    }
    const r = await long;
    assert.equal(r.usage.completion_tokens, 400);
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(fin, 'length');
    assert.ok(streamed >= 200, `${streamed} chunks`);
    assert.equal(await exited(s), 0);
    assert.match(s.log, /SIGTERM: shutting down/);
    await assert.rejects(get(s, '/health'));
  } finally {
    s.proc.kill('SIGKILL');
  }
});

test('a second signal aborts the requests in flight and exits at once', { timeout: 60000 }, async () => {
  const s = await startServer(QWEN, ['--tokenizer', QWEN_TOKENIZER]);
  try {
    const openai = client(s);
    const long = openai.completions.create({ model: 'qwen2-tiny-151k', prompt: 'Go on', max_tokens: 30000, ignore_eos: true })
      .then((r) => r, (e) => e);
    await waitMetrics(s, (x) => x.get('vllm:num_requests_running{model_name="qwen2-tiny-151k"}') === 1, 20000);
    const t0 = Date.now();
    s.proc.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    s.proc.kill('SIGINT');
    assert.equal(await exited(s), 0);
    assert.ok(Date.now() - t0 < 10000);
    const r = await long;
    if (!(r instanceof Error)) {
      assert.equal(r.choices[0].finish_reason, 'abort');
      assert.ok(r.usage.completion_tokens < 30000);
    }
    assert.match(s.log, /second signal/);
  } finally {
    s.proc.kill('SIGKILL');
  }
});

test('bad command lines fail with a message and status 2; a busy port fails with status 1', async () => {
  const run = (args) => new Promise((resolve) => execFile(LOOM, args, { timeout: 60000 },
    (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stderr })));
  let r = await run(['serve']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /usage: loom serve MODEL_DIR/);
  r = await run(['serve', STORIES, '--port', '70000']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--port/);
  r = await run(['serve', STORIES, '--bogus']);
  assert.equal(r.code, 2);
  r = await run(['serve', '/nonexistent/model']);
  assert.equal(r.code, 1);
  const s = await startServer(STORIES);
  try {
    r = await run(['serve', STORIES, '--port', String(s.port)]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot listen on 127\.0\.0\.1:\d+/);
  } finally {
    s.proc.kill('SIGKILL');
  }
  r = await run(['serve', '--help']);
  assert.equal(r.code, 0);
});
