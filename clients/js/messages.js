// SCP handshake records and the client's half of the handshake.
//
// A record is a u16 big-endian length and that many bytes of `\n`-joined
// ASCII lines. Parsers are strict (a field that does not parse is an error,
// never a guess); encoders write what the reference implementation writes, so
// records round-trip byte for byte.

import {
  dhPublic,
  dhSecret,
  hashkey,
  hmac64Md5,
  isValidPublic,
  leToU64,
  randomPrivateKey,
  u64ToLe,
} from './crypt.js';

/** Largest record content accepted, in bytes (what the gate accepts). */
export const MAX_RECORD = 512;

/** The status codes of a resume answer, and what they mean. */
export const STATUS = Object.freeze({
  200: 'resumed',
  400: 'malformed request',
  401: 'unauthorized',
  403: 'index expired',
  404: 'id not found',
  406: 'not acceptable',
  501: 'network error',
});

/**
 * An SCP failure. `code` is the status code for an answer the gate gave
 * (401, 404, …), 406 too when this side cannot resend what the gate misses,
 * or a string for failures of another kind (`'protocol'`, `'retries'`,
 * `'closed'`).
 */
export class ScpError extends Error {
  /**
   * @param {number | string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = 'ScpError';
    this.code = code;
  }
}

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/**
 * Standard padded base64 of a u64's 8 bytes little-endian (12 characters).
 * @param {bigint} v
 * @returns {string}
 */
export function b64OfU64(v) {
  const b = u64ToLe(v);
  let out = '';
  for (let i = 0; i < 9; i += 3) {
    const n = (b[i] << 16) | ((b[i + 1] ?? 0) << 8) | (b[i + 2] ?? 0);
    out += B64[n >> 18] + B64[(n >> 12) & 63];
    out += i + 1 < 8 ? B64[(n >> 6) & 63] : '=';
    out += i + 2 < 8 ? B64[n & 63] : '=';
  }
  return out;
}

/**
 * The u64 of a standard padded base64 of exactly 8 bytes; throws otherwise
 * (other lengths, other alphabets, missing padding, stray trailing bits).
 * @param {string} s
 * @param {string} field named in the error
 * @returns {bigint}
 */
export function u64OfB64(s, field) {
  const bad = () => new ScpError('protocol', `${field} is not base64 of 8 bytes`);
  if (s.length !== 12 || s[11] !== '=' || s[10] === '=') throw bad();
  const out = new Uint8Array(9);
  for (let i = 0; i < 12; i += 4) {
    let n = 0;
    for (let k = 0; k < 4; k++) {
      const ch = s[i + k];
      const v = i + k === 11 ? 0 : B64.indexOf(ch);
      if (v < 0) throw bad();
      n = (n << 6) | v;
    }
    out[(i / 4) * 3] = n >> 16;
    out[(i / 4) * 3 + 1] = (n >> 8) & 0xff;
    out[(i / 4) * 3 + 2] = n & 0xff;
  }
  // The last character before the padding carries 2 unused bits: zero them.
  if (out[8] !== 0) throw bad();
  return leToU64(out);
}

/** @param {string} s @param {string} field @returns {bigint} */
function decimal(s, field) {
  if (!/^[0-9]+$/.test(s)) throw new ScpError('protocol', `${field} is not a decimal number`);
  return BigInt(s);
}

/** @param {string} s @param {string} field @returns {number} a u32 */
function decimalU32(s, field) {
  const v = decimal(s, field);
  if (v > 0xffffffffn) throw new ScpError('protocol', `${field} overflows 32 bits`);
  return Number(v);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * One record: u16 big-endian length, then the content.
 * @param {string | Uint8Array} content at most MAX_RECORD bytes
 * @returns {Uint8Array}
 */
export function encodeRecord(content) {
  const bytes = typeof content === 'string' ? encoder.encode(content) : content;
  if (bytes.length > MAX_RECORD) throw new RangeError('record content over MAX_RECORD');
  const out = new Uint8Array(2 + bytes.length);
  out[0] = bytes.length >> 8;
  out[1] = bytes.length & 0xff;
  out.set(bytes, 2);
  return out;
}

/**
 * Reassembles one record from chunks of any size, never taking a byte past
 * its end (what follows a handshake record is stream data).
 */
export class RecordReader {
  constructor() {
    this.head = new Uint8Array(2);
    this.headLen = 0;
    /** @type {Uint8Array | null} */
    this.body = null;
    this.bodyLen = 0;
    /** @type {string | null} why the record is refused, once known */
    this.error = null;
  }

  /**
   * Takes bytes up to the end of the record; returns how many it took.
   * @param {Uint8Array} data
   * @returns {number}
   */
  push(data) {
    let used = 0;
    while (this.headLen < 2 && used < data.length) this.head[this.headLen++] = data[used++];
    if (this.headLen < 2 || this.error) return used;
    if (!this.body) {
      const len = (this.head[0] << 8) | this.head[1];
      if (len === 0 || len > MAX_RECORD) {
        this.error = len === 0 ? 'empty record' : `record of ${len} bytes is over ${MAX_RECORD}`;
        return used;
      }
      this.body = new Uint8Array(len);
    }
    const n = Math.min(this.body.length - this.bodyLen, data.length - used);
    this.body.set(data.subarray(used, used + n), this.bodyLen);
    this.bodyLen += n;
    return used + n;
  }

  /** @returns {string | null} the content, once all of it has arrived */
  record() {
    return this.body && this.bodyLen === this.body.length ? decoder.decode(this.body) : null;
  }
}

const TARGET = /^[A-Za-z0-9_]*$/;

/**
 * The new-session request: `0`, the client's public key, and the optional
 * target and flag lines.
 * @param {{publicKey: bigint, target?: string, flag?: number}} req
 * @returns {string}
 */
export function encodeNewConnReq({ publicKey, target, flag }) {
  let s = `0\n${b64OfU64(publicKey)}`;
  if (target !== undefined || flag !== undefined) {
    if (target !== undefined && !TARGET.test(target)) {
      throw new RangeError('target must match [A-Za-z0-9_]*');
    }
    s += `\n${target ?? ''}`;
  }
  if (flag !== undefined) {
    if (!Number.isInteger(flag) || flag < -0x80000000 || flag > 0x7fffffff) {
      throw new RangeError('flag must be a 32-bit integer');
    }
    s += `\n${flag}`;
  }
  return s;
}

/**
 * Parses the gate's answer to a new session: `id\nbase64(public key)`.
 * @param {string} content
 * @returns {{id: number, publicKey: bigint}}
 */
export function parseNewConnResp(content) {
  const lines = content.split('\n');
  if (lines.length !== 2) throw new ScpError('protocol', 'new-session answer is not 2 lines');
  const id = decimalU32(lines[0], 'id');
  if (id === 0) throw new ScpError('protocol', 'session id 0');
  return { id, publicKey: u64OfB64(lines[1], 'key') };
}

/**
 * The resume request's signature:
 * `hmac64Md5(hashkey("id\nindex\nreceived\n"), secret)`.
 * @param {number} id
 * @param {number} index
 * @param {number} received u32
 * @param {bigint} secret
 * @returns {bigint}
 */
export function resumeSum(id, index, received, secret) {
  return hmac64Md5(hashkey(`${id}\n${index}\n${received}\n`), secret);
}

/**
 * The resume request: id, index, received, and their signature.
 * @param {{id: number, index: number, received: number, secret: bigint}} req
 * @returns {string}
 */
export function encodeReuseConnReq({ id, index, received, secret }) {
  return `${id}\n${index}\n${received}\n${b64OfU64(resumeSum(id, index, received, secret))}`;
}

/**
 * Parses the gate's answer to a resume: `received\ncode`, the code being 3
 * digits, alone or followed by a space and text.
 * @param {string} content
 * @returns {{received: number, code: number}}
 */
export function parseReuseConnResp(content) {
  const lines = content.split('\n');
  if (lines.length !== 2) throw new ScpError('protocol', 'resume answer is not 2 lines');
  const received = decimalU32(lines[0], 'received');
  const m = /^([0-9]{3})(?: .*)?$/s.exec(lines[1]);
  if (!m) throw new ScpError('protocol', 'resume answer has no 3-digit code');
  return { received, code: Number(m[1]) };
}

/**
 * The client's half of one connection's handshake, sans I/O: `output` is
 * the request record to send; `feed` takes the gate's bytes until the
 * answer is complete, and `result` says what it was.
 *
 * Results: `{type: 'established', id, secret}`, `{type: 'resumed',
 * serverReceived}`, `{type: 'rejected', code, serverReceived}` (the gate
 * closes next), `{type: 'failed', error}` (an unusable answer).
 */
export class ClientHandshake {
  /** @private */
  constructor(mode, privateKey, content) {
    this.mode = mode;
    this.privateKey = privateKey;
    /** The request record, to send first on the connection. */
    this.output = encodeRecord(content);
    this.reader = new RecordReader();
    /** @type {null | {type: string, [k: string]: any}} */
    this.result = null;
  }

  /**
   * Opens a new session.
   * @param {{privateKey?: bigint, target?: string, flag?: number}} [opts]
   *   `privateKey` for reproducible tests; random otherwise
   * @returns {ClientHandshake}
   */
  static newSession({ privateKey, target, flag } = {}) {
    const key = privateKey ?? randomPrivateKey();
    return new ClientHandshake('new', key, encodeNewConnReq({ publicKey: dhPublic(key), target, flag }));
  }

  /**
   * Resumes session `id` with `index` (1 for the first resume, then strictly
   * increasing), having received `received` bytes (mod 2^32).
   * @param {{id: number, index: number, received: number, secret: bigint}} req
   * @returns {ClientHandshake}
   */
  static resume(req) {
    return new ClientHandshake('resume', null, encodeReuseConnReq(req));
  }

  /**
   * Feeds bytes from the gate; returns how many were taken. Bytes past the
   * answer record are not taken: they are stream data.
   * @param {Uint8Array} data
   * @returns {number}
   */
  feed(data) {
    if (this.result) return 0;
    const n = this.reader.push(data);
    if (this.reader.error) {
      this.result = { type: 'failed', error: new ScpError('protocol', this.reader.error) };
      return n;
    }
    const content = this.reader.record();
    if (content !== null) {
      try {
        this.result = this.judge(content);
      } catch (error) {
        this.result = { type: 'failed', error };
      }
    }
    return n;
  }

  /** @private */
  judge(content) {
    if (this.mode === 'new') {
      const { id, publicKey } = parseNewConnResp(content);
      if (!isValidPublic(publicKey)) throw new ScpError('protocol', 'the gate sent an unusable public key');
      return { type: 'established', id, secret: dhSecret(this.privateKey, publicKey) };
    }
    const { received, code } = parseReuseConnResp(content);
    return code === 200
      ? { type: 'resumed', serverReceived: received }
      : { type: 'rejected', code, serverReceived: received };
  }
}
