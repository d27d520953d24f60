// errors.test.mjs: bad requests get the right status and an OpenAI error object, and the next good
// request is answered correctly: malformed JSON, invalid UTF-8, wrong types, negative and huge
// numbers, bodies over 10 MB, unknown fields (ignored), unknown routes and models, wrong methods,
// API keys, and slow-loris connections (closed after --http-timeout while others are served).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import OpenAI from 'openai';
import { STORIES, startServer, stopServer, client, post, get, rawPost, rawHttp, metrics } from './helpers.mjs';

let server, openai, good;
const MODEL = 'stories260K';

before(async () => {
  server = await startServer(STORIES, ['--http-timeout', '2', '--served-model-name', MODEL]);
  openai = client(server);
  good = (await openai.completions.create({ model: MODEL, prompt: 'Zoo', max_tokens: 8, temperature: 0 })).choices[0].text;
});

after(async () => {
  const code = await stopServer(server);
  assert.equal(code, 0, server.log.slice(-3000));
});

async function stillGood() {
  const r = await openai.completions.create({ model: MODEL, prompt: 'Zoo', max_tokens: 8, temperature: 0 });
  assert.equal(r.choices[0].text, good);
}

function assertError(r, status, re) {
  assert.equal(r.status, status, r.text?.slice(0, 300));
  const body = typeof r.json === 'object' && r.json ? r.json : JSON.parse(r.text.slice(r.text.indexOf('\r\n\r\n') + 4));
  assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof body.error.message, 'string');
  assert.equal(body.error.type, status >= 500 ? 'server_error' : 'invalid_request_error');
  if (re) assert.match(body.error.message, re);
  return body.error;
}

test('malformed JSON, invalid UTF-8, non-object bodies: 400, and the server goes on', async () => {
  const bodies = [
    ['{"prompt": "Zoo", ', /not valid JSON/],
    ['', /not valid JSON/],
    ['{"prompt": "Zoo"} {"again": 1}', /not valid JSON/],
    ['[1, 2, 3]', /must be a JSON object/],
    ['"just a string"', /not valid JSON|must be a JSON object/],
    ['{"prompt": "Zoo", "max_tokens": 5,}', /not valid JSON/],
    ['{"prompt": "\\ud800"}', /not valid JSON/],
  ];
  for (const [b, re] of bodies) {
    assertError(await post(server, '/v1/completions', b), 400, re);
    await stillGood();
  }
  // raw invalid UTF-8 bytes inside a JSON string
  const bad = Buffer.concat([Buffer.from('{"model": "stories260K", "prompt": "Zo'), Buffer.from([0xff, 0xc3, 0x28]),
    Buffer.from('"}')]);
  const r = await rawPost(server, '/v1/completions', bad);
  assert.equal(r.status, 400);
  assert.match(r.text, /not valid JSON/);
  await stillGood();
  const r2 = await rawPost(server, '/v1/chat/completions',
    Buffer.concat([Buffer.from('{"messages": [{"role": "user", "content": "'), Buffer.from([0xed, 0xa0, 0x80]),
      Buffer.from('"}]}')]));
  assert.equal(r2.status, 400);
  await stillGood();
});

test('wrong types and out-of-range values: 400 naming the field, through the openai client', async () => {
  const cases = [
    [{ max_tokens: -1 }, 'max_tokens', /at least 1/],
    [{ max_tokens: 0 }, 'max_tokens', /at least 1/],
    [{ max_tokens: 1e12 }, 'max_tokens', /at most/],
    [{ max_tokens: 'ten' }, 'max_tokens', /integer/],
    [{ max_tokens: 100000 }, 'prompt', /maximum context length is 512 tokens/],
    [{ temperature: 2.5 }, 'temperature', /\[0, 2\]/],
    [{ temperature: -1 }, 'temperature', /\[0, 2\]/],
    [{ temperature: '1' }, 'temperature', /number/],
    [{ top_p: 0 }, 'top_p', /\(0, 1\]/],
    [{ top_p: 1.5 }, 'top_p', /\(0, 1\]/],
    [{ n: 0 }, 'n', /at least 1/],
    [{ n: -3 }, 'n', /at least 1/],
    [{ n: 1.5 }, 'n', /integer/],
    [{ best_of: 3 }, 'best_of', /must equal/],
    [{ logprobs: 50 }, 'logprobs', /at most 20/],
    [{ stop: 7 }, 'stop', /string or an array/],
    [{ seed: 'x' }, 'seed', /integer/],
    [{ presence_penalty: 9 }, 'presence_penalty', /\[-2, 2\]/],
    [{ prompt: [] }, 'prompt', /empty/],
    [{ prompt: [1, 99999] }, 'prompt', /out of the vocabulary/],
    [{ prompt: { text: 'x' } }, 'prompt', /must be a string/],
    [{ suffix: 'the end' }, 'suffix', /not supported/],
    [{ stream_options: { include_usage: true } }, 'stream_options', /only allowed when 'stream' is true/],
    [{ logit_bias: { abc: 1 } }, 'logit_bias', /not a token id/],
  ];
  for (const [patch, param, re] of cases) {
    await assert.rejects(openai.completions.create({ model: MODEL, prompt: 'Zoo', max_tokens: 4, ...patch }), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${JSON.stringify(patch)}: ${e}`);
      assert.equal(e.status, 400);
      assert.equal(e.param, param, JSON.stringify(patch));
      assert.match(e.message, re);
      return true;
    });
  }
  await stillGood();
  // numbers too large for JSON's doubles or for int64
  for (const b of ['{"prompt": "Zoo", "max_tokens": 1e400}', '{"prompt": "Zoo", "max_tokens": 123456789012345678901234567890}',
    '{"prompt": "Zoo", "temperature": -1e999}']) {
    assertError(await post(server, '/v1/completions', b), 400, /not valid JSON/);
  }
  await stillGood();
});

test('unknown fields are ignored; the full path and no model at all are accepted', async () => {
  const r = await post(server, '/v1/completions', {
    model: MODEL, prompt: 'Zoo', max_tokens: 8, temperature: 0, surprise: { nested: [1, 2, { a: null }] }, x_y: 1,
  });
  assert.equal(r.status, 200);
  assert.equal(r.json.choices[0].text, good);
  const noModel = await post(server, '/v1/completions', { prompt: 'Zoo', max_tokens: 8, temperature: 0 });
  assert.equal(noModel.json.choices[0].text, good);
});

test('a body over 10 MB: 413; a big body under the limit is fine', { timeout: 60000 }, async () => {
  const big = JSON.stringify({ model: MODEL, prompt: 'Zoo', max_tokens: 8, temperature: 0, pad: 'x'.repeat(10 << 20) });
  const r = await post(server, '/v1/completions', big);
  assertError(r, 413, /larger than the limit of 10485760 bytes/);
  await stillGood();
  // a client that asks first (Expect: 100-continue) gets the 413 before sending the body
  const r2 = await rawHttp(server, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${big.length}\r\nExpect: 100-continue\r\n\r\n`);
  assert.equal(r2.status, 413);
  assert.match(r2.text, /larger than the limit/);
  await stillGood();
  const fine = JSON.stringify({ model: MODEL, prompt: 'Zoo', max_tokens: 8, temperature: 0, pad: 'x'.repeat(9 << 20) });
  const r3 = await post(server, '/v1/completions', fine);
  assert.equal(r3.status, 200);
  assert.equal(r3.json.choices[0].text, good);
});

test('unknown routes 404, wrong methods 405, unknown models 404', async () => {
  assertError(await get(server, '/v1/nothing'), 404, /Not Found/);
  assertError(await post(server, '/v2/completions', {}), 404, /Not Found/);
  const m = await get(server, '/v1/completions');
  assertError(m, 405, /Method Not Allowed/);
  assert.equal(m.headers.get('allow'), 'POST');
  assertError(await post(server, '/v1/models', {}), 405);
  assertError(await post(server, '/metrics', {}), 405);
  await assert.rejects(openai.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'x' }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError);
    assert.equal(e.code, 'model_not_found');
    assert.match(e.message, /`gpt-3.5-turbo-instruct` does not exist/);
    return true;
  });
  await assert.rejects(openai.models.retrieve('nope'), (e) => e.status === 404);
  await stillGood();
  // the HTTP status counts show up in /metrics
  const mm = await metrics(server);
  assert.ok(mm.get('loom:http_responses_total{code="400"}') > 0);
  assert.ok(mm.get('loom:http_responses_total{code="404"}') > 0);
  assert.ok(mm.get('loom:http_responses_total{code="405"}') > 0);
  assert.ok(mm.get('loom:http_responses_total{code="413"}') > 0);
});

test('slow-loris connections are closed after --http-timeout; others are served meanwhile', { timeout: 30000 }, async () => {
  const N = 20;
  const t0 = Date.now();
  const loris = Array.from({ length: N }, (_, i) => rawHttp(server,
    i % 2 ? 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le' // headers never end
      : 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"prompt": ', // body never ends
    { timeoutMs: 15000 }));
  await stillGood();
  const t1 = Date.now();
  assert.ok(t1 - t0 < 2000, `a good request took ${t1 - t0} ms beside ${N} slow ones`);
  const ends = await Promise.all(loris);
  const ms = Date.now() - t0;
  for (const e of ends) assert.notEqual(e.why, 'timeout', 'the server must close a stalled connection');
  assert.ok(ms < 8000, `stalled connections closed after ${ms} ms`);
  // a client that sends one byte every half second keeps its connection (libmicrohttpd's timeout counts
  // idle time, not the time to finish the headers), but it holds one connection slot and blocks nobody
  const sock = net.connect(server.port, '127.0.0.1');
  sock.on('error', () => {});
  const timer = setInterval(() => sock.write('X'), 500);
  sock.write('GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ');
  await new Promise((r) => setTimeout(r, 3000));
  await stillGood();
  clearInterval(timer);
  sock.destroy();
});

test('--api-key protects every /v1 route (401), not /health or /metrics', async () => {
  const s = await startServer(STORIES, ['--api-key', 'sk-loom-test']);
  try {
    const nokey = client(s, { apiKey: 'wrong' });
    await assert.rejects(nokey.completions.create({ model: MODEL, prompt: 'Zoo', max_tokens: 2 }), (e) => {
      assert.ok(e instanceof OpenAI.AuthenticationError);
      assert.equal(e.code, 'invalid_api_key');
      return true;
    });
    await assert.rejects(nokey.models.list(), (e) => e.status === 401);
    assertError(await get(s, '/v1/models'), 401, /API key/);
    assertError(await post(s, '/v1/chat/completions', { messages: [] }), 401);
    assertError(await get(s, '/v1/nothing'), 401);
    assert.equal((await get(s, '/health')).status, 200);
    assert.equal((await get(s, '/metrics')).status, 200);
    const ok = client(s, { apiKey: 'sk-loom-test' });
    const r = await ok.completions.create({ model: MODEL, prompt: 'Zoo', max_tokens: 8, temperature: 0 });
    assert.equal(r.choices[0].text, good);
  } finally {
    assert.equal(await stopServer(s), 0);
  }
});
