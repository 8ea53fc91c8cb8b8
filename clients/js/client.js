// A resumable SCP client over a pluggable transport, with reconnection.

import { ClientHandshake, STATUS, ScpError } from './messages.js';
import { DEFAULT_WINDOW, Session } from './session.js';

/**
 * A transport carries the SCP byte stream; any split into messages is fine.
 * `connect(handlers)` starts one connection and returns at once; it calls
 * `handlers.onopen()` when bytes can be sent, `handlers.ondata(bytes)` for
 * each chunk received and `handlers.onclose(reason)` once when it ends
 * (whether or not it opened; not after its own `close()`).
 *
 * @typedef {{send(bytes: Uint8Array): void, close(): void}} Transport
 * @typedef {(handlers: {onopen(): void, ondata(bytes: Uint8Array): void,
 *   onclose(reason?: any): void}) => Transport} Connect
 */

/**
 * A transport over WebSocket: binary messages carry the stream, as
 * ringgate's `--ws-mode scp` door expects.
 * @param {string} url `ws://…` or `wss://…`
 * @param {{WebSocket?: any, protocols?: string | string[]}} [opts]
 *   `WebSocket`: the constructor to use (the `ws` package under Node 20,
 *   which has no global one); the global one otherwise
 * @returns {Connect}
 */
export function webSocketTransport(url, { WebSocket: Ws = globalThis.WebSocket, protocols } = {}) {
  if (!Ws) throw new TypeError('no WebSocket implementation: pass one as { WebSocket }');
  return ({ onopen, ondata, onclose }) => {
    const ws = protocols === undefined ? new Ws(url) : new Ws(url, protocols);
    ws.binaryType = 'arraybuffer';
    let live = true;
    ws.onopen = () => live && onopen();
    ws.onmessage = (ev) => {
      if (!live) return;
      const d = ev.data;
      if (d instanceof ArrayBuffer) ondata(new Uint8Array(d));
      else if (ArrayBuffer.isView(d)) ondata(new Uint8Array(d.buffer, d.byteOffset, d.byteLength));
      else ws.close(1003); // text is not part of the stream; the close reports it
    };
    // An error event is always followed by a close event.
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (!live) return;
      live = false;
      onclose(new Error(`WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`));
    };
    return {
      send(bytes) {
        if (ws.readyState === 1) ws.send(bytes);
      },
      close() {
        live = false;
        ws.close();
      },
    };
  };
}

/**
 * The delay before reconnection attempt `attempt` (0 for the first):
 * `initial * factor^attempt`, capped at `max`, then lowered by up to
 * `jitter` of itself at random so that many clients dropped at once do not
 * come back at once.
 * @param {number} attempt
 * @param {{initial?: number, max?: number, factor?: number, jitter?: number}} [opts] milliseconds
 * @param {() => number} [random] in [0, 1)
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { initial = 250, max = 15000, factor = 2, jitter = 0.5 } = {}, random = Math.random) {
  const base = Math.min(max, initial * factor ** attempt);
  return base * (1 - jitter * random());
}

/**
 * A resumable SCP session with a gate. It connects when created, resumes
 * the session over a new connection whenever one drops (with backoff),
 * resends what the gate missed, and keeps what was sent while disconnected
 * until it can go out.
 *
 * Events (`on(name, fn)`):
 * - `open` `{id}`: the session is established (once);
 * - `data` `Uint8Array`: stream bytes from the gate, in order, none lost or
 *   repeated across resumes;
 * - `disconnect` `{reason, delay}`: the connection dropped; the next
 *   attempt starts in `delay` ms;
 * - `resume` `{serverReceived, resent}`: the session goes on over a new
 *   connection; `resent` bytes the gate had missed were sent again;
 * - `error` `ScpError`: the session cannot go on (a 4xx/5xx answer, 406
 *   when the replay window no longer holds what the gate misses, a protocol
 *   error, retries exhausted); `close` follows;
 * - `close`: the client is done (after `close()` or an error).
 *
 * Bytes the gate has not received when a connection drops are resent from
 * the replay window (`windowSize`, 64 KiB by default): what is sent faster
 * than the gate takes it, beyond the window, cannot be recovered (406).
 */
export class ScpClient {
  /**
   * @param {object} opts
   * @param {Connect} opts.connect how to open a connection (see
   *   `webSocketTransport`)
   * @param {string} [opts.target] preferred upstream name, `[A-Za-z0-9_]*`
   * @param {number} [opts.flag] option bits (0x1: do not announce my
   *   address upstream)
   * @param {number} [opts.windowSize] replay window in bytes
   * @param {{initial?: number, max?: number, factor?: number,
   *   jitter?: number, retries?: number}} [opts.backoff] reconnection delays
   *   in ms; `retries`: consecutive failed attempts before giving up
   *   (unbounded by default)
   * @param {number} [opts.handshakeTimeout] ms a connection may take to
   *   answer the handshake before it counts as dropped (10 s)
   * @param {bigint} [opts.privateKey] a fixed DH private key, for tests
   * @param {() => number} [opts.random] jitter source, for tests
   */
  constructor(opts) {
    this.opts = opts;
    this.connectFn = opts.connect;
    this.windowSize = opts.windowSize ?? DEFAULT_WINDOW;
    this.backoff = { retries: Infinity, ...opts.backoff };
    this.handshakeTimeout = opts.handshakeTimeout ?? 10000;
    this.random = opts.random ?? Math.random;
    /** @type {Session | null} */
    this.session = null;
    /** 'connecting' | 'open' | 'waiting' | 'closed' */
    this.state = 'connecting';
    this.attempt = 0;
    /** Plaintext sent while no connection was ready, oldest first. */
    this.pending = [];
    this.listeners = new Map();
    this.conn = null;
    this.timer = null;
    this.hsTimer = null;
    // Let the caller attach listeners before anything is reported.
    queueMicrotask(() => this.state === 'connecting' && this.dial());
  }

  /**
   * Adds a listener for `event`.
   * @param {'open'|'data'|'disconnect'|'resume'|'error'|'close'} event
   * @param {(arg: any) => void} fn
   * @returns {this}
   */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return this;
  }

  /**
   * Removes a listener added with `on`.
   * @param {string} event
   * @param {(arg: any) => void} fn
   * @returns {this}
   */
  off(event, fn) {
    this.listeners.get(event)?.delete(fn);
    return this;
  }

  /** @private */
  emit(event, arg) {
    for (const fn of this.listeners.get(event) ?? []) fn(arg);
  }

  /** The session id the gate assigned, once open. */
  get id() {
    return this.session?.id ?? null;
  }

  /**
   * Sends stream bytes. While the connection is down they wait, in order,
   * and go out once the session is resumed.
   * @param {Uint8Array} bytes copied before this returns
   */
  send(bytes) {
    if (this.state === 'closed') throw new ScpError('closed', 'the client is closed');
    if (bytes.length === 0) return;
    if (this.state === 'open') this.conn.transport.send(this.session.encrypt(bytes));
    else this.pending.push(bytes.slice());
  }

  /** Ends the session on this side and stops reconnecting. */
  close() {
    this.finish(null);
  }

  /** @private */
  finish(error) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    clearTimeout(this.timer);
    clearTimeout(this.hsTimer);
    const conn = this.conn;
    this.conn = null;
    conn?.transport?.close();
    this.pending = [];
    if (error) this.emit('error', error);
    this.emit('close');
  }

  /** @private Opens a connection; the handshake goes out once it is open. */
  dial() {
    this.state = 'connecting';
    const conn = { transport: null, hs: null };
    this.conn = conn;
    const live = () => this.conn === conn;
    this.hsTimer = setTimeout(() => live() && this.dropped(new Error('handshake timed out')), this.handshakeTimeout);
    conn.transport = this.connectFn({
      onopen: () => {
        if (!live()) return;
        // Built now, not at dial time, so that `received` counts all that came.
        conn.hs = this.session
          ? ClientHandshake.resume(this.session.nextResume())
          : ClientHandshake.newSession({ privateKey: this.opts.privateKey, target: this.opts.target, flag: this.opts.flag });
        conn.transport.send(conn.hs.output);
      },
      ondata: (bytes) => live() && this.received(conn, bytes),
      onclose: (reason) => live() && this.dropped(reason ?? new Error('connection closed')),
    });
  }

  /** @private */
  received(conn, bytes) {
    if (this.state === 'open') {
      this.emit('data', this.session.decrypt(bytes));
      return;
    }
    if (!conn.hs) return; // nothing is due before the request went out
    const used = conn.hs.feed(bytes);
    const r = conn.hs.result;
    if (!r) return;
    clearTimeout(this.hsTimer);
    switch (r.type) {
      case 'established':
        this.session = new Session(r.id, r.secret, this.windowSize);
        this.ready();
        this.emit('open', { id: r.id });
        break;
      case 'resumed': {
        let resent;
        try {
          resent = this.session.resend(r.serverReceived);
        } catch (error) {
          this.finish(error);
          return;
        }
        if (resent.length) conn.transport.send(resent);
        this.ready();
        this.emit('resume', { serverReceived: r.serverReceived, resent: resent.length });
        break;
      }
      case 'rejected':
        this.finish(new ScpError(r.code, `the gate refused the resume: ${r.code} ${STATUS[r.code] ?? ''}`.trim()));
        return;
      default:
        this.finish(r.error);
        return;
    }
    if (this.state === 'open' && used < bytes.length) this.received(conn, bytes.subarray(used));
  }

  /** @private The connection carries the session: send what waited. */
  ready() {
    this.state = 'open';
    this.attempt = 0;
    const waiting = this.pending;
    this.pending = [];
    for (const p of waiting) this.conn.transport.send(this.session.encrypt(p));
  }

  /** @private */
  dropped(reason) {
    clearTimeout(this.hsTimer);
    const conn = this.conn;
    this.conn = null;
    conn?.transport?.close();
    if (this.attempt >= this.backoff.retries) {
      this.finish(new ScpError('retries', `gave up after ${this.attempt} failed attempts: ${reason?.message ?? reason}`));
      return;
    }
    const delay = backoffDelay(this.attempt++, this.backoff, this.random);
    this.state = 'waiting';
    this.emit('disconnect', { reason, delay });
    this.timer = setTimeout(() => this.state === 'waiting' && this.dial(), delay);
  }
}
