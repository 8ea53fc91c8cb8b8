// The building blocks beyond the recorded vectors: MD5 against Node's, RC4
// and packet framing under every chunking, strict parsing, key checks, the
// replay window across the 2^32 wrap.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  ClientHandshake,
  P,
  PacketReader,
  Rc4,
  ReplayWindow,
  Session,
  b64OfU64,
  dhPublic,
  encodePacket,
  encodeRecord,
  md5,
  parseNewConnResp,
  parseReuseConnResp,
  u64OfB64,
} from '../scp.js';
import { prng } from './gate-model.js';

const random = prng(42);
const bytes = (n) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));

test('md5 matches node:crypto at every padding boundary', () => {
  for (let n = 0; n < 200; n++) {
    const b = bytes(n);
    assert.equal(Buffer.from(md5(b)).toString('hex'), createHash('md5').update(b).digest('hex'), `length ${n}`);
  }
});

test('rc4 gives the same stream however the input is chunked', () => {
  const secret = 8869555674357331102n;
  const data = bytes(3000);
  const whole = Rc4.fromSecret(secret).apply(data.slice());
  for (let trial = 0; trial < 50; trial++) {
    const rc4 = Rc4.fromSecret(secret);
    const out = new Uint8Array(data.length);
    let i = 0;
    while (i < data.length) {
      const n = Math.min(data.length - i, Math.floor(random() * 300));
      rc4.apply(data.subarray(i, i + n), out.subarray(i, i + n));
      i += n;
    }
    assert.deepEqual(out, whole);
  }
});

test('base64 of a u64 round-trips and is strict', () => {
  for (const v of [0n, 1n, P - 1n, 0xffffffffffffffffn, 0x0123456789abcdefn]) assert.equal(u64OfB64(b64OfU64(v), 'k'), v);
  for (const bad of ['', 'AAAAAAAAAAA', 'AAAAAAAAAAAA', 'AAAAAAAAAA==', 'AAAAAAAAAAB=', 'AAAAAAAA*AA=', 'AAAAAAAAAAA=\n']) {
    assert.throws(() => u64OfB64(bad, 'k'), { code: 'protocol' }, JSON.stringify(bad));
  }
});

test('answers parse strictly', () => {
  assert.deepEqual(parseReuseConnResp('5\n200'), { received: 5, code: 200 });
  assert.deepEqual(parseReuseConnResp('4294967295\n200 OK'), { received: 4294967295, code: 200 });
  assert.deepEqual(parseReuseConnResp('0\n404 id not found'), { received: 0, code: 404 });
  for (const bad of ['5', '5\n20', '5\n2000', '-1\n200', '4294967296\n200', '5\n200\n', 'x\n200', '5\n200x']) {
    assert.throws(() => parseReuseConnResp(bad), { code: 'protocol' }, JSON.stringify(bad));
  }
  const key = b64OfU64(dhPublic(3n));
  assert.equal(parseNewConnResp(`1\n${key}`).id, 1);
  for (const bad of [`0\n${key}`, `4294967296\n${key}`, `7`, `7\n${key}\n`, ` 7\n${key}`, `7\nAAAA`]) {
    assert.throws(() => parseNewConnResp(bad), { code: 'protocol' }, JSON.stringify(bad));
  }
});

test('a gate public key of 0, 1, P or above is refused', () => {
  for (const key of [0n, 1n, P, P + 1n, 0xffffffffffffffffn]) {
    const hs = ClientHandshake.newSession();
    hs.feed(encodeRecord(`7\n${b64OfU64(key)}`));
    assert.equal(hs.result.type, 'failed', `key ${key}`);
    assert.equal(hs.result.error.code, 'protocol');
  }
  const hs = ClientHandshake.newSession();
  hs.feed(encodeRecord(`7\n${b64OfU64(2n)}`));
  assert.equal(hs.result.type, 'established');
});

test('records that are empty or too long are refused at their prefix', () => {
  for (const prefix of [[0, 0], [2, 1]]) {
    const hs = ClientHandshake.newSession();
    assert.equal(hs.feed(new Uint8Array([...prefix, 1, 2, 3])), 2);
    assert.equal(hs.result.type, 'failed');
  }
});

test('a resume refusal carries its code', () => {
  const hs = ClientHandshake.resume({ id: 7, index: 2, received: 0, secret: 1n });
  hs.feed(encodeRecord('3\n403'));
  assert.deepEqual(hs.result, { type: 'rejected', code: 403, serverReceived: 3 });
});

test('packet framing under every split of the stream', () => {
  const packets = [bytes(0), bytes(1), bytes(300), bytes(2), bytes(65535), bytes(5)];
  const stream = new Uint8Array(packets.reduce((n, p) => n + 2 + p.length, 0));
  let off = 0;
  for (const p of packets) {
    stream.set(encodePacket(p), off);
    off += 2 + p.length;
  }
  // Every single cut point, then random multi-way splits.
  const cuts = [];
  for (let c = 0; c <= stream.length; c += c < 400 ? 1 : 997) cuts.push([c]);
  for (let t = 0; t < 50; t++) cuts.push(Array.from({ length: 20 }, () => Math.floor(random() * stream.length)).sort((a, b) => a - b));
  for (const points of cuts) {
    const reader = new PacketReader();
    const got = [];
    let prev = 0;
    for (const c of [...points, stream.length]) {
      got.push(...reader.push(stream.subarray(prev, c)));
      prev = c;
    }
    assert.equal(got.length, packets.length, `cuts ${points}`);
    got.forEach((p, i) => assert.deepEqual(p, packets[i]));
    assert.equal(reader.pending, 0);
  }
  assert.throws(() => encodePacket(new Uint8Array(65536)), RangeError);
});

test('replay window: what is missing, across the ring and the 2^32 wrap', () => {
  const w = new ReplayWindow(8);
  w.write(Uint8Array.of(1, 2, 3, 4, 5, 6));
  assert.deepEqual(w.missing(2), Uint8Array.of(3, 4, 5, 6));
  w.write(Uint8Array.of(7, 8, 9, 10));
  assert.deepEqual(w.missing(2), Uint8Array.of(3, 4, 5, 6, 7, 8, 9, 10));
  assert.equal(w.missing(1), null, 'older than the window');
  assert.equal(w.missing(11), null, 'ahead of what was written');
  assert.deepEqual(w.missing(10), new Uint8Array(0));
  w.write(bytes(20));
  assert.equal(w.held, 8);

  // A session that has carried nearly 4 GiB.
  const s = new Session(7, 5n, 16);
  s.window.written = 2 ** 32 - 3;
  const c = s.encrypt(Uint8Array.of(1, 2, 3, 4, 5));
  assert.equal(s.sent, 2);
  assert.deepEqual(s.resend(2 ** 32 - 1), c.subarray(2));
  assert.deepEqual(s.resend(1), c.subarray(4));
  assert.deepEqual(s.resend(2 ** 32 - 3), c);
  s.receivedTotal = 2 ** 32 - 1;
  s.decrypt(new Uint8Array(3));
  assert.equal(s.received, 2);
  assert.deepEqual(s.nextResume(), { id: 7, index: 1, received: 2, secret: 5n });
});
