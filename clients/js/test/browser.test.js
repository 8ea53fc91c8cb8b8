// The client in a real browser against the real gate: headless Chromium
// (Debian's `chromium`, driven by playwright-core) loads a page served by this
// process that imports the client as an ES module, and talks to
// `ringgate serve --ws …` (its built-in echo). The page's results come back
// through `page.evaluate`; the bytes are checked here.
//
// Skipped, saying why, without the gate binary ($RINGGATE_BIN, else
// target/release or target/debug), without Chromium or without
// playwright-core (see browser.js).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, createPublicKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prng } from './gate-model.js';
import { browserSkip, launch } from './browser.js';
import { bin, freePort, root, startGate, until } from './harness.js';

const skip = browserSkip;
if (skip) console.log(`browser tests ${skip}`);

/** Whether this gate has the TLS WebSocket door (`serve --wss`). */
const hasWss = !skip && execFileSync(bin, ['serve', '--help'], { encoding: 'utf8' }).includes('--wss');

const PAGE = `<!doctype html><meta charset="utf-8"><title>ringgate browser test</title>
<script type="module">import * as scp from '/js/scp.js'; window.scp = scp; window.ready = true;</script>`;

/**
 * An HTTP server on loopback serving the test page at `/` and the client's
 * modules (clients/js/*.js) at `/js/`. Its origin is what the page's
 * WebSockets send as `Origin`.
 */
async function pageServer() {
  const server = http.createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const module = /^\/js\/([a-z0-9_-]+\.js)$/.exec(path);
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE);
    } else if (module && existsSync(`${root}clients/js/${module[1]}`)) {
      res.writeHead(200, { 'content-type': 'text/javascript' }).end(readFileSync(`${root}clients/js/${module[1]}`));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/**
 * A TCP relay to 127.0.0.1:`target` whose `cut()` resets every connection
 * through it at once, both sides: a network that fails under the session.
 */
async function cuttableRelay(target) {
  const pairs = new Set();
  const server = net.createServer((a) => {
    const b = net.connect(target, '127.0.0.1');
    const pair = [a, b];
    pairs.add(pair);
    a.pipe(b);
    b.pipe(a);
    const end = () => {
      pairs.delete(pair);
      a.destroy();
      b.destroy();
    };
    a.on('error', end).on('close', end);
    b.on('error', end).on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: server.address().port,
    /** Resets every connection; returns how many there were. */
    cut() {
      const n = pairs.size;
      for (const [a, b] of pairs) {
        a.resetAndDestroy();
        b.resetAndDestroy();
      }
      pairs.clear();
      return n;
    },
    close: () => server.close(),
  };
}

/** Random payloads: `n` of them, sizes up to `max` (a few empty and full). */
function payloads(seed, n, max) {
  const random = prng(seed);
  return Array.from({ length: n }, (_, i) => {
    const len = i === 0 ? 0 : i === 1 ? max : Math.floor(random() * max);
    return Buffer.from(Uint8Array.from({ length: len }, () => Math.floor(random() * 256)));
  });
}

/**
 * In the page: an `ScpClient` to `url` sends `packets` (base64) as u16
 * packets, and the connection drops once per entry of `drops`, mid-stream:
 * `'page'` closes the WebSocket from the page, `'cut'` has the test reset
 * the TCP connection under it (`window.cutConnection`). Each round sends a
 * batch, drops at once (the batch and its echoes on their way), and sends
 * another batch before the session has resumed (it waits in the client).
 * Last, a marker packet: once its echo is back, anything repeated would have
 * come before it. Returns the packets echoed (base64), the resumes and any
 * errors.
 */
async function scpInPage({ url, packets, drops }) {
  const { ScpClient, webSocketTransport, encodePacket, PacketReader } = window.scp;
  const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const toB64 = (u) => btoa(Array.from(u, (b) => String.fromCharCode(b)).join(''));
  const until = async (pred, ms, what) => {
    const end = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = new ScpClient({ connect: webSocketTransport(url, { WebSocket: Tracked }), backoff: { initial: 20, max: 200 } });
  const reader = new PacketReader();
  const got = [];
  const errors = [];
  let resumes = 0;
  let resent = 0;
  client.on('data', (d) => got.push(...reader.push(d)));
  client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
  client.on('resume', (r) => {
    resumes++;
    resent += r.resent;
  });
  await new Promise((resolve, reject) => {
    client.on('open', resolve);
    client.on('error', reject);
  });
  // Batches: one sent on a live connection, then the drop at once (its
  // bytes and their echoes are on their way), then one sent while the
  // session is down; the next round starts once it has resumed and the
  // echoes of the rounds before are back.
  let outstanding = 0;
  const marker = new TextEncoder().encode('end of test');
  try {
    const per = Math.ceil(packets.length / (2 * drops.length + 1));
    const batch = (k) => {
      for (const p of packets.slice(k * per, (k + 1) * per)) client.send(encodePacket(fromB64(p)));
      return Math.min(packets.length, (k + 1) * per);
    };
    for (let i = 0; i < drops.length; i++) {
      // Paced: at most two batches unanswered (sent, and sent while down),
      // so that both replay windows (64 KiB) cover what a drop loses.
      const echoed = Math.min(packets.length, 2 * i * per);
      await until(() => (resumes === i && got.length >= echoed) || errors.length > 0, 10000, 'a resume and the echoes so far');
      outstanding += batch(2 * i) - got.length;
      if (drops[i] === 'page') sockets.at(-1).close();
      else await window.cutConnection();
      batch(2 * i + 1);
    }
    await until(() => resumes === drops.length || errors.length > 0, 10000, 'a resume');
    batch(2 * drops.length);
    client.send(encodePacket(marker));
    await until(() => got.length > packets.length || errors.length > 0, 20000, 'every echo');
    // Let anything that would follow the marker arrive too.
    await new Promise((r) => setTimeout(r, 50));
  } catch (e) {
    // Reported with what the client said (an error closes it).
    errors.push(`in the page: ${e.message}`);
  }
  client.close();
  return { got: got.map(toB64), marker: toB64(marker), errors, resumes, resent, sockets: sockets.length, outstanding };
}

/**
 * In the page: a raw WebSocket to a packets-mode door. `groups` is a list of
 * messages, each the base64 of the bytes to send in it (whole packets, two
 * in one, or a packet split across messages). Resolves with every message
 * received (base64) once `expect` have come, or the close's code.
 */
async function packetsInPage({ url, groups, expect }) {
  const toB64 = (u) => btoa(Array.from(u, (b) => String.fromCharCode(b)).join(''));
  const ws = new WebSocket(url);
  ws.binaryType = 'arraybuffer';
  const got = [];
  return new Promise((resolve) => {
    ws.onopen = () => {
      for (const g of groups) ws.send(Uint8Array.from(atob(g), (c) => c.charCodeAt(0)));
    };
    ws.onmessage = (ev) => {
      got.push(toB64(new Uint8Array(ev.data)));
      if (got.length === expect) {
        ws.close();
        resolve({ got, opened: true });
      }
    };
    ws.onclose = (ev) => resolve({ got, opened: got.length > 0, code: ev.code });
  });
}

/**
 * In the page: opens a WebSocket to `url`; resolves with whether it opened
 * and, after it closes, its close code.
 */
async function openInPage(url) {
  const ws = new WebSocket(url);
  let opened = false;
  return new Promise((resolve) => {
    ws.onopen = () => {
      opened = true;
      ws.close();
    };
    ws.onclose = (ev) => resolve({ opened, code: ev.code });
  });
}

describe('in Chromium', { skip }, () => {
  let browser;
  let pages;
  const servers = [];

  before(async () => {
    servers.push(await pageServer(), await pageServer());
    browser = await launch();
  });
  after(async () => {
    await browser?.close();
    for (const s of servers) s.server.close();
  });

  /** A page of server `which`, the client loaded. */
  async function newPage(t, which = 0, b = browser) {
    const page = await b.newPage();
    t.after(() => page.close());
    await page.goto(`${servers[which].origin}/`);
    await page.waitForFunction(() => window.ready === true);
    return page;
  }

  /** The SCP scenario through a cuttable relay to the gate's `port`. */
  async function scpThroughRelay(t, page, scheme, port, seed, log) {
    const relay = await cuttableRelay(port);
    t.after(() => relay.close());
    const cuts = [];
    await page.exposeFunction('cutConnection', () => cuts.push(relay.cut()));
    // 13 batches of 10 packets; two batches (60 KiB at most) fit in a window.
    const sent = payloads(seed, 120, 3000);
    const drops = ['cut', 'page', 'cut', 'page', 'cut', 'page'];
    const r = await page.evaluate(scpInPage, { url: `${scheme}://127.0.0.1:${relay.port}/`, packets: sent.map((p) => p.toString('base64')), drops });
    assert.deepEqual(r.errors, [], log());
    assert.equal(r.resumes, drops.length);
    assert.equal(r.sockets, drops.length + 1, 'one WebSocket per connection');
    assert.equal(cuts.length, 3);
    assert.ok(cuts.every((n) => n >= 1), 'each cut reset the live connection');
    assert.equal(r.got.length, sent.length + 1, 'nothing repeated, nothing lost');
    r.got.slice(0, sent.length).forEach((g, i) => assert.equal(g, sent[i].toString('base64'), `packet ${i}`));
    assert.equal(r.got.at(-1), r.marker);
    t.diagnostic(`${r.resumes} resumes; ${r.outstanding} echoes were on their way at the drops; the client resent ${r.resent} bytes`);
  }

  test('SCP over ws://: echoes byte for byte across drops from both ends, nothing lost or repeated', async (t) => {
    const ws = await freePort();
    const { log } = await startGate(t, ['--listen', `127.0.0.1:${await freePort()}`, '--ws', `127.0.0.1:${ws}`, '--ws-mode', 'scp'], ws);
    await scpThroughRelay(t, await newPage(t), 'ws', ws, 11, log);
  });

  test('packets over ws://: each u16 packet echoed as one message', async (t) => {
    const ws = await freePort();
    await startGate(t, ['--listen', `127.0.0.1:${await freePort()}`, '--ws', `127.0.0.1:${ws}`, '--ws-mode', 'packets'], ws);
    const page = await newPage(t);
    const packets = payloads(5, 40, 65535).map((p) => Buffer.concat([Buffer.from([p.length >> 8, p.length & 0xff]), p]));
    // Messages: one packet, two packets, and a packet split across two.
    const groups = [];
    for (let i = 0; i < packets.length; ) {
      if (i % 3 === 1 && i + 1 < packets.length) {
        groups.push(Buffer.concat([packets[i], packets[i + 1]]));
        i += 2;
      } else if (i % 3 === 2) {
        const cut = Math.floor(packets[i].length / 2);
        groups.push(packets[i].subarray(0, cut), packets[i].subarray(cut));
        i += 1;
      } else {
        groups.push(packets[i]);
        i += 1;
      }
    }
    const r = await page.evaluate(packetsInPage, { url: `ws://127.0.0.1:${ws}/`, groups: groups.map((g) => g.toString('base64')), expect: packets.length });
    assert.equal(r.got.length, packets.length, `close ${r.code}`);
    r.got.forEach((g, i) => assert.equal(g, packets[i].toString('base64'), `packet ${i}`));
  });

  test('a page from an origin not allowed, or a path not served, is refused', async (t) => {
    const ws = await freePort();
    const { log } = await startGate(
      t,
      ['--listen', `127.0.0.1:${await freePort()}`, '--ws', `127.0.0.1:${ws}`, '--ws-path', '/game', '--ws-origin', servers[0].origin],
      ws,
    );
    const allowed = await newPage(t, 0);
    const other = await newPage(t, 1);
    // Why each handshake failed, as Chromium's network layer reports it.
    const failures = [];
    for (const page of [allowed, other]) {
      page.on('websocket', (ws) => ws.on('socketerror', (e) => failures.push(`${new URL(ws.url()).pathname}: ${e}`)));
    }
    assert.equal((await allowed.evaluate(openInPage, `ws://127.0.0.1:${ws}/game`)).opened, true, log());
    assert.deepEqual(await allowed.evaluate(openInPage, `ws://127.0.0.1:${ws}/elsewhere`), { opened: false, code: 1006 });
    assert.deepEqual(await other.evaluate(openInPage, `ws://127.0.0.1:${ws}/game`), { opened: false, code: 1006 });
    await until(() => failures.length >= 2, 5000, 'the refusals to be reported');
    assert.deepEqual(failures, [
      '/elsewhere: Error during WebSocket handshake: Unexpected response code: 404',
      '/game: Error during WebSocket handshake: Unexpected response code: 403',
    ]);
  });

  test('SCP over wss:// (self-signed certificate, pinned by its key)', { skip: !hasWss && 'SKIPPED: this gate has no `serve --wss`' }, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'ringgate-wss-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const [cert, key] = [join(dir, 'cert.pem'), join(dir, 'key.pem')];
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'ignore' });
    const spki = createHash('sha256').update(createPublicKey(readFileSync(cert)).export({ type: 'spki', format: 'der' })).digest('base64');
    const wss = await freePort();
    const { log } = await startGate(
      t,
      ['--listen', `127.0.0.1:${await freePort()}`, '--wss', `127.0.0.1:${wss}`, '--tls-cert', cert, '--tls-key', key, '--ws-mode', 'scp'],
      wss,
    );
    const pinned = await launch([`--ignore-certificate-errors-spki-list=${spki}`]);
    t.after(() => pinned.close());
    await scpThroughRelay(t, await newPage(t, 0, pinned), 'wss', wss, 13, log);
  });
});
