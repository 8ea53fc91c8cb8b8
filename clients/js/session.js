// An established SCP session: the two RC4 states, the byte counters, the
// resume index and the replay window. The gate's side holds the same state;
// the test model of the gate uses this class too.

import { Rc4 } from './crypt.js';
import { ScpError } from './messages.js';

/** The replay window SCP's reference implementation keeps by default. */
export const DEFAULT_WINDOW = 65536;

/**
 * The last `capacity` bytes of ciphertext as they were sent, for resending
 * after a resume. They are never re-encrypted: the cipher simply continues.
 */
export class ReplayWindow {
  /** @param {number} capacity */
  constructor(capacity = DEFAULT_WINDOW) {
    if (!(Number.isInteger(capacity) && capacity > 0)) throw new RangeError('window capacity must be positive');
    this.ring = new Uint8Array(capacity);
    /** Bytes written since the session began (exact below 2^53). */
    this.written = 0;
  }

  /** How many of the last bytes written are still held. */
  get held() {
    return Math.min(this.written, this.ring.length);
  }

  /** @param {Uint8Array} bytes */
  write(bytes) {
    const cap = this.ring.length;
    // Only the last `cap` bytes can ever be resent.
    const keep = bytes.length > cap ? bytes.subarray(bytes.length - cap) : bytes;
    const skipped = bytes.length - keep.length;
    let pos = (this.written + skipped) % cap;
    const first = Math.min(keep.length, cap - pos);
    this.ring.set(keep.subarray(0, first), pos);
    this.ring.set(keep.subarray(first), 0);
    this.written += bytes.length;
  }

  /**
   * The bytes a peer that has received `peerReceived` (mod 2^32) is
   * missing: `(written - peerReceived) mod 2^32` of them, from the end.
   * @param {number} peerReceived
   * @returns {Uint8Array | null} null when the window no longer holds them
   *   (or the peer claims more than was written)
   */
  missing(peerReceived) {
    const n = (this.written - peerReceived) % 0x100000000;
    const count = n < 0 ? n + 0x100000000 : n;
    if (count > this.held) return null;
    const cap = this.ring.length;
    const out = new Uint8Array(count);
    const start = (((this.written - count) % cap) + cap) % cap;
    const first = Math.min(count, cap - start);
    out.set(this.ring.subarray(start, start + first));
    out.set(this.ring.subarray(0, count - first), first);
    return out;
  }
}

/** One established session, as either side holds it. */
export class Session {
  /**
   * @param {number} id the id the gate assigned
   * @param {bigint} secret the DH secret
   * @param {number} [windowSize]
   */
  constructor(id, secret, windowSize = DEFAULT_WINDOW) {
    this.id = id;
    this.secret = secret;
    this.tx = Rc4.fromSecret(secret);
    this.rx = Rc4.fromSecret(secret);
    this.window = new ReplayWindow(windowSize);
    /** Stream bytes received (exact below 2^53; sent mod 2^32). */
    this.receivedTotal = 0;
    /** Last resume index used (client) or accepted (gate). */
    this.lastIndex = 0;
  }

  /** Bytes received, mod 2^32, as they travel. */
  get received() {
    return this.receivedTotal % 0x100000000;
  }

  /** Bytes sent, mod 2^32, as they travel. */
  get sent() {
    return this.window.written % 0x100000000;
  }

  /**
   * Encrypts `plain` into a new array, kept in the replay window.
   * @param {Uint8Array} plain
   * @returns {Uint8Array} the ciphertext to send
   */
  encrypt(plain) {
    const out = this.tx.apply(plain, new Uint8Array(plain.length));
    this.window.write(out);
    return out;
  }

  /**
   * Decrypts received ciphertext into a new array and counts it.
   * @param {Uint8Array} cipher
   * @returns {Uint8Array}
   */
  decrypt(cipher) {
    this.receivedTotal += cipher.length;
    return this.rx.apply(cipher, new Uint8Array(cipher.length));
  }

  /**
   * Client side: the fields of the next resume request, for
   * `ClientHandshake.resume`. The index is used up even if the attempt
   * fails, so every request carries a fresh one.
   * @returns {{id: number, index: number, received: number, secret: bigint}}
   */
  nextResume() {
    this.lastIndex += 1;
    return { id: this.id, index: this.lastIndex, received: this.received, secret: this.secret };
  }

  /**
   * The ciphertext a peer that has received `peerReceived` is missing.
   * @param {number} peerReceived mod 2^32
   * @returns {Uint8Array}
   * @throws {ScpError} 406 when the window no longer holds it
   */
  resend(peerReceived) {
    const out = this.window.missing(peerReceived);
    if (!out) {
      throw new ScpError(406, `the peer is missing more than the ${this.window.ring.length}-byte replay window holds`);
    }
    return out;
  }
}
