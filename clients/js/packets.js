// Packet framing inside the stream, as skynet's gate speaks it: each packet is
// a u16 big-endian length and that many bytes. SCP itself adds no framing to
// the stream, so the stream may split a packet anywhere.

/** Largest packet payload a u16 length can announce. */
export const MAX_PACKET = 0xffff;

/**
 * One packet: u16 big-endian length, then `payload`.
 * @param {Uint8Array} payload at most MAX_PACKET bytes
 * @returns {Uint8Array}
 */
export function encodePacket(payload) {
  if (payload.length > MAX_PACKET) throw new RangeError(`packet of ${payload.length} bytes is over ${MAX_PACKET}`);
  const out = new Uint8Array(2 + payload.length);
  out[0] = payload.length >> 8;
  out[1] = payload.length & 0xff;
  out.set(payload, 2);
  return out;
}

/** Cuts a byte stream, arriving in chunks of any size, into packets. */
export class PacketReader {
  constructor() {
    this.head = new Uint8Array(2);
    this.headLen = 0;
    /** @type {Uint8Array | null} */
    this.body = null;
    this.bodyLen = 0;
  }

  /**
   * Takes a chunk of the stream and returns the packets it completed, in
   * order (each a fresh array).
   * @param {Uint8Array} chunk
   * @returns {Uint8Array[]}
   */
  push(chunk) {
    const out = [];
    let i = 0;
    while (i < chunk.length) {
      if (!this.body) {
        this.head[this.headLen++] = chunk[i++];
        if (this.headLen < 2) continue;
        this.body = new Uint8Array((this.head[0] << 8) | this.head[1]);
        this.headLen = 0;
        this.bodyLen = 0;
      } else {
        const n = Math.min(this.body.length - this.bodyLen, chunk.length - i);
        this.body.set(chunk.subarray(i, i + n), this.bodyLen);
        this.bodyLen += n;
        i += n;
      }
      if (this.body && this.bodyLen === this.body.length) {
        out.push(this.body);
        this.body = null;
      }
    }
    return out;
  }

  /** Bytes of an unfinished packet held (0 between packets). */
  get pending() {
    return this.body ? 2 + this.bodyLen : this.headLen;
  }
}
