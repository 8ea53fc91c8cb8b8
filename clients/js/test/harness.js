// What the tests that run the real gate share: finding the binary, a free
// port, waiting for a condition, starting `ringgate serve` and stopping it.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root directory (ends with a slash). */
export const root = fileURLToPath(new URL('../../../', import.meta.url));

/**
 * The gate binary: $RINGGATE_BIN, else target/release/ringgate, else
 * target/debug/ringgate; null when there is none.
 */
export const bin =
  [process.env.RINGGATE_BIN && resolve(process.env.RINGGATE_BIN), `${root}target/release/ringgate`, `${root}target/debug/ringgate`].find(
    (p) => p && existsSync(p),
  ) ?? null;

/**
 * The chat example (examples/chat.rs): $RINGGATE_CHAT, else `examples/chat`
 * beside the gate binary, else in target/release or target/debug; null when
 * there is none.
 */
export const chatBin =
  [
    process.env.RINGGATE_CHAT && resolve(process.env.RINGGATE_CHAT),
    bin && `${dirname(bin)}/examples/chat`,
    `${root}target/release/examples/chat`,
    `${root}target/debug/examples/chat`,
  ].find((p) => p && existsSync(p)) ?? null;

/** A port free right now on loopback. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Polls `pred` (which may return a promise) until it holds; throws after `ms`. */
export async function until(pred, ms, what) {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Whether a TCP connection to 127.0.0.1:`port` is accepted now. */
export const canConnect = (port) =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.on('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });

/**
 * Runs `program args` and waits until 127.0.0.1:`port` accepts connections.
 * Returns the child and its stderr so far (`log()`); it is killed by
 * `t.after`.
 * @param {import('node:test').TestContext} t
 * @param {string} program
 * @param {string[]} args
 * @param {number} port
 * @param {object} [env] extra environment
 */
export async function startProcess(t, program, args, port, env = {}) {
  const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let log = '';
  child.stdout.on('data', (d) => (log += d));
  child.stderr.on('data', (d) => (log += d));
  t.after(() => child.kill());
  await until(() => child.exitCode !== null || canConnect(port), 20000, `${program} to listen on ${port}`).catch((e) => {
    child.kill();
    throw new Error(`${e.message}\n${log}`);
  });
  if (child.exitCode !== null) throw new Error(`${program} exited with ${child.exitCode}\n${log}`);
  return { child, log: () => log };
}

/**
 * `ringgate serve` with `args`, waiting for `port` (one of its listeners).
 * @param {import('node:test').TestContext} t
 * @param {string[]} args
 * @param {number} port
 */
export function startGate(t, args, port) {
  return startProcess(t, bin, ['serve', '--shards', '1', ...args], port);
}
