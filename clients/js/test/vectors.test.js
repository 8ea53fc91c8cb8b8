// Every entry of scp.json (recorded from the reference implementations) that
// a client computes. `sproto_announce` is left out: it is what a gate sends
// upstream, never something a client sees.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  ClientHandshake,
  Rc4,
  Session,
  b64OfU64,
  dhPublic,
  dhSecret,
  encodeNewConnReq,
  encodeRecord,
  encodeReuseConnReq,
  hashkey,
  hmac64,
  hmac64Md5,
  hmacHash,
  leToU64,
  parseNewConnResp,
  parseReuseConnResp,
  rc4Key,
  resumeSum,
  u64OfB64,
} from '../scp.js';

const v = JSON.parse(readFileSync(new URL('./data/scp.json', import.meta.url), 'utf8'));
const hex = (b) => Buffer.from(b).toString('hex');
const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));
const leHex = (s) => leToU64(unhex(s));
const entries = (key) => {
  assert.ok(Array.isArray(v[key]) && v[key].length > 0, `${key} has entries`);
  return v[key];
};

test('dh64_public', () => {
  for (const e of entries('dh64_public')) assert.equal(dhPublic(BigInt(e.private)), BigInt(e.public), e.private);
});

test('dh64_secret', () => {
  for (const e of entries('dh64_secret')) {
    const [a, b] = [BigInt(e.private_a), BigInt(e.private_b)];
    assert.equal(dhPublic(a), BigInt(e.public_a));
    assert.equal(dhPublic(b), BigInt(e.public_b));
    assert.equal(dhSecret(a, BigInt(e.public_b)), BigInt(e.secret));
    assert.equal(dhSecret(b, BigInt(e.public_a)), BigInt(e.secret));
  }
});

test('hashkey', () => {
  for (const e of entries('hashkey')) assert.equal(hashkey(e.text), leHex(e.hash_hex), JSON.stringify(e.text));
});

test('hmac64_md5', () => {
  for (const e of entries('hmac64_md5')) assert.equal(hmac64Md5(leHex(e.x_hex), leHex(e.y_hex)), leHex(e.hmac_hex));
});

test('hmac64', () => {
  for (const e of entries('hmac64')) assert.equal(hmac64(leHex(e.x_hex), leHex(e.y_hex)), leHex(e.hmac_hex));
});

test('hmac_hash', () => {
  for (const e of entries('hmac_hash')) assert.equal(hmacHash(leHex(e.secret_hex), e.text), leHex(e.hmac_hex));
});

test('rc4 key and keystream', () => {
  for (const e of entries('rc4')) {
    const secret = BigInt(e.secret);
    assert.equal(hex(rc4Key(secret)), e.rc4_key_hex);
    assert.equal(hex(Rc4.fromSecret(secret).apply(new Uint8Array(64))), e.keystream_first64_hex);
  }
});

test('messages encode and parse as the reference does', () => {
  const m = v.messages;
  const clientPrivate = BigInt(m.client_private);
  const secret = BigInt(m.secret);
  assert.equal(encodeNewConnReq({ publicKey: dhPublic(clientPrivate), target: 'test1', flag: 1 }), m.new_conn_req);
  assert.ok(m.new_conn_req.includes(`\n${m.b64_pubkey_example}\n`));
  assert.equal(b64OfU64(dhPublic(clientPrivate)), m.b64_pubkey_example);
  assert.equal(u64OfB64(m.b64_pubkey_example, 'key'), dhPublic(clientPrivate));

  const resp = parseNewConnResp(m.new_conn_resp);
  assert.deepEqual(resp, { id: 7, publicKey: dhPublic(BigInt(m.server_private)) });
  assert.equal(dhSecret(clientPrivate, resp.publicKey), secret);

  const [id, index, received, sum] = m.reuse_conn_req.split('\n');
  assert.deepEqual([id, index, received], ['7', '1', '11']);
  assert.equal(resumeSum(7, 1, 11, secret), u64OfB64(sum, 'sum'));
  assert.equal(encodeReuseConnReq({ id: 7, index: 1, received: 11, secret }), m.reuse_conn_req);

  assert.deepEqual(parseReuseConnResp(m.reuse_conn_resp), { received: 5, code: 200 });
});

/** Feeds `bytes` to `hs` one byte at a time; returns how many it took. */
function feedBytewise(hs, bytes) {
  let used = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (hs.result) {
      // Done: whatever follows is not the handshake's.
      assert.equal(hs.feed(bytes.subarray(i)), 0);
      break;
    }
    used += hs.feed(bytes.subarray(i, i + 1));
  }
  return used;
}

test('client handshake fed byte by byte reaches the vectors', () => {
  const m = v.messages;
  const secret = BigInt(m.secret);
  const hs = ClientHandshake.newSession({ privateKey: BigInt(m.client_private), target: 'test1', flag: 1 });
  assert.deepEqual(hs.output, encodeRecord(m.new_conn_req));
  // Stream bytes right behind the answer are not taken.
  const answer = encodeRecord(m.new_conn_resp);
  const input = new Uint8Array([...answer, 1, 2, 3]);
  assert.equal(feedBytewise(hs, input), answer.length);
  assert.deepEqual(hs.result, { type: 'established', id: 7, secret });

  const rs = ClientHandshake.resume({ id: 7, index: 1, received: 11, secret });
  assert.deepEqual(rs.output, encodeRecord(m.reuse_conn_req));
  const rAnswer = encodeRecord(m.reuse_conn_resp);
  assert.equal(feedBytewise(rs, new Uint8Array([...rAnswer, 9])), rAnswer.length);
  assert.deepEqual(rs.result, { type: 'resumed', serverReceived: 5 });
});

test('transcript: both directions, the server writing in two pieces', () => {
  const t = v.transcript;
  const secret = BigInt(t.secret);
  assert.equal(secret, BigInt(v.messages.secret));
  const client = new Session(7, secret);
  const server = new Session(7, secret);
  const enc = new TextEncoder();
  const c = client.encrypt(enc.encode(t.client_plain_1));
  assert.equal(hex(c), t.client_cipher_1_hex);
  assert.equal(new TextDecoder().decode(server.decrypt(c)), t.client_plain_1);
  const s = [...server.encrypt(enc.encode(t.server_plain_1)), ...server.encrypt(enc.encode(t.server_plain_2))];
  assert.equal(hex(s), t.server_cipher_hex);
  assert.equal(new TextDecoder().decode(client.decrypt(new Uint8Array(s))), t.server_plain_1 + t.server_plain_2);
  assert.equal(client.sent, 11);
  assert.equal(server.received, 11);
});
