// The client against the real gate: `ringgate serve --ws … --ws-mode scp`
// proxying to an echo upstream. The binary is $RINGGATE_BIN, else
// target/release/ringgate, else target/debug/ringgate; without one (or
// without the `ws` package, as Node 20 has no WebSocket client) the test is
// skipped and says why.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { PacketReader, ScpClient, encodePacket, webSocketTransport } from '../scp.js';
import { prng } from './gate-model.js';
import { bin, freePort, startGate, until } from './harness.js';

let WebSocket = null;
try {
  ({ WebSocket } = await import('ws'));
} catch {
  // reported by the skip below
}
const skip = !bin ? 'no ringgate binary (build it, or set RINGGATE_BIN)' : !WebSocket ? "no 'ws' package (npm ci in clients/js)" : false;

test('echo through the real gate, dropping the WebSocket mid-stream and resuming', { skip, timeout: 60000 }, async (t) => {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise((r) => echo.listen(0, '127.0.0.1', r));
  t.after(() => echo.close());
  const [listen, ws] = [await freePort(), await freePort()];
  const { log: gateLog } = await startGate(
    t,
    ['--listen', `127.0.0.1:${listen}`, '--ws', `127.0.0.1:${ws}`, '--ws-mode', 'scp', '--upstream', `echo=127.0.0.1:${echo.address().port}`],
    ws,
  );

  // Every WebSocket the client opens, so that the test can kill one abruptly.
  const sockets = [];
  class Tracked extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = new ScpClient({
    connect: webSocketTransport(`ws://127.0.0.1:${ws}/`, { WebSocket: Tracked }),
    backoff: { initial: 20, max: 200 },
  });
  t.after(() => client.close());
  const reader = new PacketReader();
  const got = [];
  const errors = [];
  let resumes = 0;
  client.on('data', (d) => got.push(...reader.push(d)));
  client.on('error', (e) => errors.push(e));
  let resent = 0;
  client.on('resume', (r) => {
    resumes++;
    resent += r.resent;
  });
  await new Promise((r) => client.on('open', r));

  const random = prng(7);
  const sent = [];
  for (let round = 0; round < 6; round++) {
    for (let k = 0; k < 20; k++) {
      const p = Uint8Array.from({ length: Math.floor(random() * 4000) }, () => Math.floor(random() * 256));
      sent.push(p);
      client.send(encodePacket(p));
    }
    // Mid-stream: echoes are on their way back and sends still queued.
    await new Promise((r) => setTimeout(r, Math.floor(random() * 5)));
    sockets.at(-1).terminate();
    const before = resumes;
    await until(() => resumes > before || errors.length > 0, 10000, 'a resume');
  }
  await until(() => got.length === sent.length || errors.length > 0, 20000, 'every echo');
  assert.deepEqual(errors, [], gateLog());
  assert.equal(resumes, 6);
  assert.equal(got.length, sent.length);
  sent.forEach((p, i) => assert.deepEqual(got[i], p, `packet ${i}`));
  t.diagnostic(`${resumes} resumes; the client resent ${resent} bytes the gate had missed`);
});
