// bench.test.mjs: `loom bench serve` against a real `loom serve` on 127.0.0.1. A short run must complete
// with no failure, and its token counts must agree with the server's own /metrics counters
// (vllm:prompt_tokens_total and vllm:generation_tokens_total, before and after the run).
// Needs only Node's standard library; LOOM_BIN is the loom binary, LOOM_SHARED the ../shared folder.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const LOOM = process.env.LOOM_BIN;
const SHARED = process.env.LOOM_SHARED;
const MODEL_NAME = 'bench-tiny';
let dir, server, port, serverLog = '';

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
}

async function metrics() {
  const r = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(r.status, 200);
  return r.text();
}

// The sum over label sets of a Prometheus counter, e.g. vllm:generation_tokens_total{model_name="x"} 12
function counter(text, name) {
  let sum = 0, found = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = line.match(/^([^\s{]+)(\{[^}]*\})?\s+([0-9.eE+-]+)/);
    if (m && m[1] === name) {
      sum += Number(m[3]);
      found = true;
    }
  }
  assert.ok(found, `${name} is not in /metrics`);
  return sum;
}

function bench(args) {
  return new Promise((resolve) => {
    const p = spawn(LOOM, ['bench', 'serve', '--port', String(port), '--model', MODEL_NAME, '--no-progress', ...args],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { err += d; });
    const kill = setTimeout(() => p.kill('SIGKILL'), 120_000);
    p.on('close', (code) => { clearTimeout(kill); resolve({ code, out, err }); });
  });
}

before(async () => {
  assert.ok(LOOM, 'LOOM_BIN is not set');
  dir = mkdtempSync(join(tmpdir(), 'loom-bench-e2e-'));
  const model = join(dir, 'model');
  execFileSync(LOOM, ['make-model', join(SHARED, 'models/qwen2-tiny/config.json'), model,
    '--tokenizer', 'byte-level', '--seed', '7'], { stdio: 'ignore' });
  port = await freePort();
  server = spawn(LOOM, ['serve', model, '--host', '127.0.0.1', '--port', String(port),
    '--served-model-name', MODEL_NAME, '--threads', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
  server.stderr.on('data', (d) => { serverLog = (serverLog + d).slice(-4000); });
  const deadline = Date.now() + 60_000;
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) break;
    } catch { /* not up yet */ }
    if (server.exitCode !== null) throw new Error(`loom serve exited: ${serverLog}`);
    if (Date.now() > deadline) throw new Error(`loom serve did not come up in 60 s: ${serverLog}`);
    await new Promise((r) => setTimeout(r, 200));
  }
});

after(() => {
  if (server && server.exitCode === null) server.kill('SIGTERM');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('bench serve: a short run completes and its token counts match the server /metrics', async () => {
  const before = await metrics();
  const p0 = counter(before, 'vllm:prompt_tokens_total');
  const g0 = counter(before, 'vllm:generation_tokens_total');
  const json = join(dir, 'serve.json');
  // 12 requests of 10..30 prompt ids (vocab 512) asking for 4..12 tokens, Poisson at 50 req/s, 4 at a time
  const r = await bench(['--num-prompts', '12', '--random-input-len', '20', '--random-output-len', '8',
    '--random-range-ratio', '0.5', '--vocab-size', '512', '--ignore-eos', '--request-rate', '50',
    '--max-concurrency', '4', '--metric-percentiles', '50,99', '--goodput', 'ttft:60000', '--timeout', '30',
    '--json', json, '--save-detailed']);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /Serving Benchmark Result/);
  const res = JSON.parse(readFileSync(json, 'utf8'));
  assert.equal(res.completed, 12, JSON.stringify(res.errors));
  assert.equal(res.failed, 0);
  assert.equal(res.output_tokens_from_usage, 12); // the server sent usage in its final chunk
  // ignore_eos: every request generated exactly what it asked for
  const lens = res.output_lens.reduce((a, b) => a + b, 0);
  assert.equal(res.total_output_tokens, lens);
  assert.ok(res.output_lens.every((n) => n >= 4 && n <= 12), String(res.output_lens));
  assert.equal(res.total_input_tokens, res.input_lens.reduce((a, b) => a + b, 0));
  const after = await metrics();
  assert.equal(counter(after, 'vllm:generation_tokens_total') - g0, res.total_output_tokens);
  assert.equal(counter(after, 'vllm:prompt_tokens_total') - p0, res.total_input_tokens);
  // the figures are there and sane
  assert.ok(res.mean_ttft_ms > 0 && res.p99_ttft_ms >= res.median_ttft_ms);
  assert.ok(res.mean_tpot_ms > 0 && res.mean_itl_ms > 0 && res.mean_e2el_ms >= res.mean_ttft_ms);
  assert.ok(res.request_throughput > 0 && res.output_throughput > 0);
  assert.equal(res.request_goodput, res.request_throughput); // a 60 s TTFT SLO holds for every request
  assert.ok(res.max_concurrent_requests >= 1 && res.max_concurrent_requests <= 4);
  assert.match(res.git.commit ?? '', /^[0-9a-f]{40}$|^$/);
  assert.equal(res.machine.cpu_cores > 0, true);
});

test('bench serve: the chat endpoint with text prompts, all at once', async () => {
  const g0 = counter(await metrics(), 'vllm:generation_tokens_total');
  const json = join(dir, 'chat.json');
  const r = await bench(['--endpoint', '/v1/chat/completions', '--random-prompt-type', 'text',
    '--num-prompts', '6', '--random-input-len', '8', '--random-output-len', '5', '--ignore-eos', '--json', json]);
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(readFileSync(json, 'utf8'));
  assert.equal(res.completed, 6, JSON.stringify(res.errors));
  assert.equal(res.total_output_tokens, 30);
  assert.equal(counter(await metrics(), 'vllm:generation_tokens_total') - g0, 30);
});
