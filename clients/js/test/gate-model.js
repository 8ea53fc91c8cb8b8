// A model of the gate's side of SCP, built from the client's own primitives,
// and an in-memory link between it and the client that splits, delays,
// loses and cuts bytes as a test asks. The real gate is covered by
// e2e.test.js; this model lets the unit tests stage every loss exactly.

import {
  RecordReader,
  STATUS,
  Session,
  b64OfU64,
  dhPublic,
  dhSecret,
  encodeRecord,
  randomPrivateKey,
  resumeSum,
  u64OfB64,
} from '../scp.js';

/** A small seeded PRNG (mulberry32), so that failures reproduce. */
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Splits `bytes` into 1 to 4 random pieces. */
function split(bytes, random) {
  const out = [];
  let i = 0;
  while (i < bytes.length) {
    const n = out.length === 3 ? bytes.length - i : 1 + Math.floor(random() * (bytes.length - i));
    out.push(bytes.slice(i, i + n));
    i += n;
  }
  return out;
}

/** One connection between the client and the model gate. */
export class Link {
  constructor(gate, handlers, random) {
    this.gate = gate;
    this.handlers = handlers;
    this.random = random;
    this.dead = false;
    /** Set to drop everything sent that way from now on (still "sent"). */
    this.blackhole = { toGate: false, toClient: false };
    this.conn = gate.accept(this);
    setImmediate(() => !this.dead && handlers.onopen());
  }

  /** The client's transport: sends to the gate. */
  transport() {
    return {
      send: (bytes) => this.deliver(bytes, 'toGate'),
      close: () => {
        this.dead = true;
      },
    };
  }

  /** @private */
  deliver(bytes, way) {
    if (this.dead || this.blackhole[way]) return;
    for (const piece of split(bytes.slice(), this.random)) {
      setImmediate(() => {
        if (this.dead) return; // in flight when the link broke: lost
        if (way === 'toGate') this.conn.received(piece);
        else this.handlers.ondata(piece);
      });
    }
  }

  /** The gate sends to the client. */
  sendToClient(bytes) {
    this.deliver(bytes, 'toClient');
  }

  /** Breaks the link: bytes in flight either way are lost; the client hears of it. */
  cut() {
    if (this.dead) return;
    this.dead = true;
    setImmediate(() => this.handlers.onclose(new Error('cut')));
  }
}

/** The gate's side: sessions by id, each with its replay window. */
export class GateModel {
  /**
   * @param {{windowSize?: number, okText?: boolean, seed?: number,
   *   onData?: (plain: Uint8Array, entry: object) => void}} [opts]
   *   `onData` defaults to echoing; `okText` answers `200 OK`
   */
  constructor(opts = {}) {
    this.windowSize = opts.windowSize ?? 65536;
    this.okText = opts.okText ?? false;
    this.onData = opts.onData ?? ((plain, entry) => this.send(entry, plain));
    this.random = prng(opts.seed ?? 1);
    this.sessions = new Map();
    this.nextId = 7;
    /** @type {Link | null} the newest link */
    this.link = null;
    /** Every resume answer's code, in order. */
    this.answers = [];
    /** The client's `connect` function. */
    this.connect = (handlers) => {
      this.link = new Link(this, handlers, this.random);
      return this.link.transport();
    };
  }

  /** Sends stream bytes to the session's client over its current link. */
  send(entry, plain) {
    const cipher = entry.session.encrypt(plain);
    entry.link?.sendToClient(cipher);
  }

  /** @private A new connection's state. */
  accept(link) {
    const gate = this;
    const reader = new RecordReader();
    let entry = null;
    return {
      received(bytes) {
        if (entry) {
          gate.onData(entry.session.decrypt(bytes), entry);
          return;
        }
        const used = reader.push(bytes);
        const content = reader.record();
        if (reader.error) return link.cut();
        if (content === null) return;
        entry = content.startsWith('0\n') ? gate.newSession(link, content) : gate.resume(link, content);
        if (entry && used < bytes.length) this.received(bytes.subarray(used));
      },
    };
  }

  /** @private */
  newSession(link, content) {
    const clientPublic = u64OfB64(content.split('\n')[1], 'key');
    const priv = randomPrivateKey();
    const id = this.nextId++;
    const entry = { session: new Session(id, dhSecret(priv, clientPublic), this.windowSize), link };
    this.sessions.set(id, entry);
    link.sendToClient(encodeRecord(`${id}\n${b64OfU64(dhPublic(priv))}`));
    return entry;
  }

  /** @private */
  resume(link, content) {
    const [id, index, received, sum] = content.split('\n');
    const entry = this.sessions.get(Number(id));
    const refuse = (code) => {
      this.answers.push(code);
      link.sendToClient(encodeRecord(`${entry?.session.received ?? 0}\n${code}`));
      setImmediate(() => link.cut());
      return null;
    };
    if (!entry) return refuse(404);
    const s = entry.session;
    if (resumeSum(Number(id), Number(index), Number(received), s.secret) !== u64OfB64(sum, 'sum')) return refuse(401);
    if (Number(index) <= s.lastIndex) return refuse(403);
    const missing = s.window.missing(Number(received));
    if (!missing) return refuse(406);
    s.lastIndex = Number(index);
    this.answers.push(200);
    // The resume takes the session over: the old connection is closed.
    entry.link?.cut();
    entry.link = link;
    link.sendToClient(encodeRecord(`${s.received}\n${this.okText ? `200 ${STATUS[200]}` : '200'}`));
    if (missing.length) link.sendToClient(missing);
    return entry;
  }
}
