// helpers.mjs: what the e2e tests share: starting `$LOOM_BIN serve` on a free port (--port 0, the
// port is read from its log), the official openai client pointed at it, raw HTTP for bodies no client
// would send, /metrics parsing, `loom generate --json`, and the shared test data. Every server is
// killed when the test file ends (and on process exit), whatever happened.
import { spawn, execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import OpenAI from 'openai';

export const LOOM = process.env.LOOM_BIN;
export const SHARED = process.env.LOOM_SHARED;
if (!LOOM || !SHARED) throw new Error('LOOM_BIN and LOOM_SHARED must be set (scripts/e2e.sh sets them)');

export const STORIES = join(SHARED, 'models/stories260K');
export const QWEN = join(SHARED, 'models/qwen2-tiny-151k');
export const QWEN_TOKENIZER = join(SHARED, 'tokenizers/qwen2.5-instruct');

export function storiesExpected() {
  return JSON.parse(readFileSync(join(STORIES, 'expected.json'), 'utf8'));
}

const servers = new Set();
function killAll() {
  for (const s of servers) {
    try { s.proc.kill('SIGKILL'); } catch { /* gone */ }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll();
    process.exit(130);
  });
}

// Starts `loom serve MODEL --port 0 ...args`; resolves once it listens.
export function startServer(model, args = [], { env = {}, timeoutMs = 120000 } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(LOOM, ['serve', model, '--host', '127.0.0.1', '--port', '0', ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const server = { proc, log: '', port: 0, exited: null };
    servers.add(server);
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`loom serve did not start in ${timeoutMs} ms; log:\n${server.log}`));
    }, timeoutMs);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (d) => {
      server.log += d;
      if (!server.port) {
        const m = server.log.match(/on http:\/\/127\.0\.0\.1:(\d+)/);
        if (m) {
          server.port = Number(m[1]);
          server.url = `http://127.0.0.1:${server.port}`;
          clearTimeout(timer);
          resolve(server);
        }
      }
    });
    proc.on('exit', (code, signal) => {
      server.exited = { code, signal };
      servers.delete(server);
      if (!server.port) {
        clearTimeout(timer);
        reject(new Error(`loom serve exited (${code ?? signal}) before listening; log:\n${server.log}`));
      }
    });
  });
}

// SIGTERM, then SIGKILL after graceMs. Resolves with the exit code (null if killed).
export function stopServer(server, { signal = 'SIGTERM', graceMs = 15000 } = {}) {
  if (!server || server.exited) return Promise.resolve(server?.exited?.code ?? null);
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.proc.kill('SIGKILL'), graceMs);
    server.proc.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    server.proc.kill(signal);
  });
}

export function client(server, opts = {}) {
  return new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60000, ...opts });
}

// fetch with a JSON body (or a raw string / Buffer); returns { status, headers, text, json }.
export async function post(server, path, body, headers = {}) {
  const data = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const r = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: data,
    signal: AbortSignal.timeout(60000),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, text, json };
}

export async function get(server, path, headers = {}) {
  const r = await fetch(`${server.url}${path}`, { headers, signal: AbortSignal.timeout(60000) });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, text, json };
}

// Raw bytes over TCP: resolves with everything the server sent before closing (or timeoutMs).
export function rawHttp(server, bytes, { timeoutMs = 10000, endAfterWrite = false } = {}) {
  return new Promise((resolve) => {
    const sock = net.connect(server.port, '127.0.0.1');
    const chunks = [];
    let done = false;
    const finish = (why) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const m = text.match(/^HTTP\/1\.[01] (\d{3})/);
      resolve({ status: m ? Number(m[1]) : 0, text, why });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    sock.on('connect', () => {
      sock.write(bytes);
      if (endAfterWrite) sock.end();
    });
    sock.on('data', (d) => chunks.push(d));
    sock.on('end', () => finish('end'));
    sock.on('close', () => finish('close'));
    sock.on('error', () => finish('error'));
  });
}

// A POST as raw HTTP/1.1 with Connection: close.
export function rawPost(server, path, body, extraHeaders = '') {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  const head = `POST ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${b.length}\r\n${extraHeaders}\r\n`;
  return rawHttp(server, Buffer.concat([Buffer.from(head, 'latin1'), b]));
}

// Prometheus text -> Map("name{labels}" -> number) and a helper to sum a metric over its label sets.
export async function metrics(server) {
  const r = await get(server, '/metrics');
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  const samples = new Map();
  for (const line of r.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/);
    if (!m) throw new Error(`bad exposition line: ${line}`);
    samples.set(m[1] + (m[2] ?? ''), Number(m[3]));
  }
  samples.sum = (name) => {
    let total = 0;
    for (const [k, v] of samples) if (k === name || k.startsWith(name + '{')) total += v;
    return total;
  };
  return samples;
}

// Waits until pred(metrics) holds (polling), or throws after timeoutMs.
export async function waitMetrics(server, pred, timeoutMs = 10000) {
  const t0 = Date.now();
  let m;
  while (Date.now() - t0 < timeoutMs) {
    m = await metrics(server);
    if (pred(m)) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
  return m;
}

// /metrics once nothing runs and the engine's counters (a snapshot taken each step) stopped moving.
export async function settledMetrics(server, timeoutMs = 10000) {
  const t0 = Date.now();
  let prev = await metrics(server);
  while (Date.now() - t0 < timeoutMs) {
    await new Promise((r) => setTimeout(r, 50));
    const m = await metrics(server);
    const running = [...m].filter(([k]) => k.startsWith('vllm:num_requests_running')).reduce((a, [, v]) => a + v, 0);
    if (running === 0 && m.sum('vllm:generation_tokens_total') === prev.sum('vllm:generation_tokens_total') &&
      m.sum('vllm:prompt_tokens_total') === prev.sum('vllm:prompt_tokens_total')) return m;
    prev = m;
  }
  return prev;
}

// `loom generate MODEL ...args --json` -> one object per output line.
export function generate(model, args) {
  return new Promise((resolve, reject) => {
    execFile(LOOM, ['generate', model, ...args, '--json'], { timeout: 120000, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`loom generate failed: ${err.message}\n${stderr}`));
        resolve(stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l)));
      });
  });
}

// The token ids a completion's logprobs name with return_tokens_as_token_ids.
export function idsOf(logprobs) {
  return logprobs.tokens.map((t) => Number(t.replace(/^token_id:/, '')));
}

// Reads an SSE response from fetch into parsed events ([DONE] as the string 'DONE').
export async function sse(server, path, body) {
  const r = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  const text = await r.text();
  const events = [];
  for (const block of text.split('\n\n')) {
    if (!block) continue;
    if (!block.startsWith('data: ')) throw new Error(`bad SSE block: ${JSON.stringify(block)}`);
    const data = block.slice(6);
    events.push(data === '[DONE]' ? 'DONE' : JSON.parse(data));
  }
  return { status: r.status, headers: r.headers, events, text };
}
