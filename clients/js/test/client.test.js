// The client against the model gate over the in-memory link: sessions
// resumed after bytes were lost both ways, refusals surfaced as errors,
// reconnection backoff.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PacketReader, ScpClient, ScpError, backoffDelay, encodePacket } from '../scp.js';
import { GateModel, prng } from './gate-model.js';

const fast = { initial: 1, max: 5, jitter: 0.5 };

/** Resolves when `pred()` holds, checking every few ms; fails after `ms`. */
async function until(pred, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

function once(client, event) {
  return new Promise((resolve) => client.on(event, resolve));
}

test('opens a session and echoes packets', async () => {
  const gate = new GateModel();
  const client = new ScpClient({ connect: gate.connect, backoff: fast, target: 'game', flag: 1 });
  const got = [];
  const reader = new PacketReader();
  client.on('data', (d) => got.push(...reader.push(d)));
  // Sent before the session is open: it waits, then goes out in order.
  client.send(encodePacket(new TextEncoder().encode('early')));
  const { id } = await once(client, 'open');
  assert.equal(id, 7);
  client.send(encodePacket(new TextEncoder().encode('later')));
  await until(() => got.length === 2, 2000, 'two echoes');
  assert.deepEqual(got.map((p) => new TextDecoder().decode(p)), ['early', 'later']);
  client.close();
  assert.equal(client.state, 'closed');
  assert.throws(() => client.send(new Uint8Array(1)), ScpError);
});

for (const seed of [1, 2, 3, 4, 5]) {
  test(`resume after bytes were lost both ways, no byte lost or repeated (seed ${seed})`, async () => {
    const random = prng(seed);
    const gate = new GateModel({ seed, okText: seed % 2 === 0 });
    const client = new ScpClient({ connect: gate.connect, backoff: fast, random });
    const sent = [];
    const got = [];
    const reader = new PacketReader();
    let resumes = 0;
    let resent = 0;
    client.on('data', (d) => got.push(...reader.push(d)));
    client.on('resume', (r) => {
      resumes++;
      resent += r.resent;
    });
    const errors = [];
    client.on('error', (e) => errors.push(e));
    await once(client, 'open');
    for (let round = 0; round < 40 && errors.length === 0; round++) {
      // Paced as an application must be: what is unacknowledged when a link
      // breaks has to fit the replay window (see README), so each burst
      // waits for a live session.
      await until(() => client.state === 'open' || errors.length > 0, 5000, 'a live session');
      const burst = 1 + Math.floor(random() * 5);
      for (let k = 0; k < burst; k++) {
        const p = new Uint8Array(Math.floor(random() * 3000));
        for (let i = 0; i < p.length; i++) p[i] = Math.floor(random() * 256);
        sent.push(p);
        client.send(encodePacket(p));
      }
      // Let some bytes through, then break the link in a random way.
      await new Promise((r) => setTimeout(r, Math.floor(random() * 3)));
      const link = gate.link;
      const r = random();
      if (r < 0.25) link.blackhole.toClient = true;
      else if (r < 0.5) link.blackhole.toGate = true;
      if (r < 0.75) link.cut();
    }
    await until(() => got.length === sent.length || errors.length > 0, 10000, 'all echoes');
    assert.deepEqual(errors, []);
    assert.equal(got.length, sent.length);
    for (let i = 0; i < sent.length; i++) assert.deepEqual(got[i], sent[i], `packet ${i}`);
    assert.ok(resumes > 0, `resumed ${resumes} times`);
    assert.ok(resent > 0, 'the client resent what the gate had missed');
    assert.ok(gate.answers.every((c) => c === 200));
    assert.equal(reader.pending, 0);
    client.close();
  });
}

async function refusedWith(code, spoil) {
  const gate = new GateModel();
  const client = new ScpClient({ connect: gate.connect, backoff: fast });
  const { id } = await once(client, 'open');
  spoil(gate, gate.sessions.get(id));
  const failed = once(client, 'error');
  const closed = once(client, 'close');
  gate.link.cut();
  const err = await failed;
  await closed;
  assert.ok(err instanceof ScpError);
  assert.equal(err.code, code);
  assert.equal(client.state, 'closed');
}

test('404: the gate no longer has the session', () =>
  refusedWith(404, (gate, entry) => gate.sessions.delete(entry.session.id)));
test('401: the sum does not verify', () => refusedWith(401, (gate, entry) => (entry.session.secret ^= 1n)));
test('403: the index is stale', () => refusedWith(403, (gate, entry) => (entry.session.lastIndex = 99)));

test('406 from the gate: the client misses more than its window holds', async () => {
  const gate = new GateModel({ windowSize: 16 });
  const client = new ScpClient({ connect: gate.connect, backoff: fast });
  await once(client, 'open');
  gate.link.blackhole.toClient = true;
  let echoed = 0;
  const onData = gate.onData;
  gate.onData = (plain, entry) => {
    echoed += plain.length;
    onData(plain, entry);
  };
  client.send(new Uint8Array(100));
  await until(() => echoed === 100, 2000, 'the gate to echo into the void');
  const failed = once(client, 'error');
  gate.link.cut();
  assert.equal((await failed).code, 406);
});

test('406 on the client: the gate misses more than the client window holds', async () => {
  const gate = new GateModel();
  const client = new ScpClient({ connect: gate.connect, backoff: fast, windowSize: 16 });
  await once(client, 'open');
  gate.link.blackhole.toGate = true;
  client.send(new Uint8Array(100));
  const failed = once(client, 'error');
  gate.link.cut();
  const err = await failed;
  assert.equal(err.code, 406);
  assert.match(err.message, /replay window/);
});

test('a garbled answer is a protocol error', async () => {
  const client = new ScpClient({
    connect: (h) => {
      setImmediate(() => {
        h.onopen();
        h.ondata(new Uint8Array([0, 3, 0x61, 0x62, 0x63]));
      });
      return { send() {}, close() {} };
    },
    backoff: fast,
  });
  const err = await once(client, 'error');
  assert.equal(err.code, 'protocol');
});

test('gives up after `retries` failed attempts, with growing delays', async () => {
  let dials = 0;
  const client = new ScpClient({
    connect: (h) => {
      dials++;
      setImmediate(() => h.onclose(new Error('refused')));
      return { send() {}, close() {} };
    },
    backoff: { initial: 1, factor: 2, max: 4, jitter: 0, retries: 4 },
  });
  const delays = [];
  client.on('disconnect', (d) => delays.push(d.delay));
  const err = await once(client, 'error');
  assert.equal(err.code, 'retries');
  assert.deepEqual(delays, [1, 2, 4, 4]);
  assert.equal(dials, 5);
});

test('close() while waiting stops reconnecting', async () => {
  let dials = 0;
  const client = new ScpClient({
    connect: (h) => {
      dials++;
      setImmediate(() => h.onclose());
      return { send() {}, close() {} };
    },
    backoff: { initial: 20 },
  });
  await once(client, 'disconnect');
  client.close();
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(dials, 1);
});

test('a handshake that never answers times out and is retried', async () => {
  let dials = 0;
  const client = new ScpClient({
    connect: (h) => {
      dials++;
      setImmediate(() => h.onopen());
      return { send() {}, close() {} };
    },
    handshakeTimeout: 5,
    backoff: { initial: 1, retries: 1 },
  });
  const { reason } = await once(client, 'disconnect');
  assert.match(reason.message, /timed out/);
  assert.equal((await once(client, 'error')).code, 'retries');
  assert.equal(dials, 2);
});

test('backoff: exponential, capped, jitter lowers by at most its share', () => {
  const opts = { initial: 100, factor: 2, max: 1000, jitter: 0.5 };
  assert.equal(backoffDelay(0, opts, () => 0), 100);
  assert.equal(backoffDelay(3, opts, () => 0), 800);
  assert.equal(backoffDelay(10, opts, () => 0), 1000);
  assert.equal(backoffDelay(10, opts, () => 0.999999), 1000 * (1 - 0.5 * 0.999999));
  for (let a = 0; a < 20; a++) {
    const d = backoffDelay(a, opts);
    assert.ok(d > 0 && d <= 1000);
  }
});
