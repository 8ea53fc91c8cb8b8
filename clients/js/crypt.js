// The primitives SCP is built from: 64-bit Diffie-Hellman, the hash and MAC
// helpers of skynet's crypt module, and RC4. 64-bit values are BigInts and
// travel as 8 bytes little-endian, as on the wire.
//
// None of this is confidentiality: a 64-bit key exchange and RC4 only keep
// casual observers out. Run the WebSocket over TLS (wss://) where it matters.

/** The DH64 prime, 2^64 - 59. */
export const P = 0xffffffffffffffc5n;
/** The DH64 generator. */
export const G = 5n;
const MASK64 = 0xffffffffffffffffn;

/**
 * `base ** exp mod P`.
 * @param {bigint} base
 * @param {bigint} exp
 * @returns {bigint}
 */
export function powMod(base, exp) {
  let result = 1n;
  let b = base % P;
  let e = exp;
  while (e > 0n) {
    if (e & 1n) result = (result * b) % P;
    b = (b * b) % P;
    e >>= 1n;
  }
  return result;
}

/**
 * A random private key: 64 bits from the platform's CSPRNG, never 0.
 * @returns {bigint}
 */
export function randomPrivateKey() {
  const bytes = new Uint8Array(8);
  globalThis.crypto.getRandomValues(bytes);
  const k = leToU64(bytes);
  return k === 0n ? 1n : k;
}

/**
 * The public key of `privateKey`: `G ** privateKey mod P`.
 * @param {bigint} privateKey
 * @returns {bigint}
 */
export function dhPublic(privateKey) {
  return powMod(G, privateKey);
}

/**
 * The shared secret: `otherPublic ** privateKey mod P`.
 * @param {bigint} privateKey
 * @param {bigint} otherPublic
 * @returns {bigint}
 */
export function dhSecret(privateKey, otherPublic) {
  return powMod(otherPublic, privateKey);
}

/**
 * Whether a peer's public key is usable: 0 and 1 would make the secret
 * predictable, and keys at or above P are not reduced.
 * @param {bigint} key
 * @returns {boolean}
 */
export function isValidPublic(key) {
  return key >= 2n && key < P;
}

/**
 * 8 bytes little-endian of a u64.
 * @param {bigint} v
 * @returns {Uint8Array}
 */
export function u64ToLe(v) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return out;
}

/**
 * The u64 in 8 bytes little-endian at `offset`.
 * @param {Uint8Array} bytes
 * @param {number} [offset=0]
 * @returns {bigint}
 */
export function leToU64(bytes, offset = 0) {
  return new DataView(bytes.buffer, bytes.byteOffset + offset, 8).getBigUint64(0, true);
}

const encoder = new TextEncoder();
/** @param {string | Uint8Array} text */
function bytesOf(text) {
  return typeof text === 'string' ? encoder.encode(text) : text;
}

/**
 * skynet's `hashkey`: a djb hash and a JS hash of the bytes, as
 * `djb | js << 32`.
 * @param {string | Uint8Array} text UTF-8 encoded when a string
 * @returns {bigint}
 */
export function hashkey(text) {
  let djb = 5381;
  let js = 1315423911;
  for (const c of bytesOf(text)) {
    djb = (djb + (djb << 5) + c) >>> 0;
    js = (js ^ (((js << 5) + c + (js >>> 2)) >>> 0)) >>> 0;
  }
  return BigInt(djb) | (BigInt(js) << 32n);
}

// MD5 (RFC 1321). WebCrypto has no MD5, and SCP needs both the full hash
// and the bare compression function.
const K = new Uint32Array([
  0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
  0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
  0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
  0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
  0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
  0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
  0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
  0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
]);
const SHIFT = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
const MD5_INIT = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/**
 * The 64 steps of MD5's compression function over one block of 16 words,
 * from `state`, *without* the final addition of the input state.
 * @param {number[]} state four u32
 * @param {ArrayLike<number>} x sixteen u32 words
 * @returns {number[]} four u32
 */
export function md5Rounds(state, x) {
  let [a, b, c, d] = state;
  for (let i = 0; i < 64; i++) {
    let f, g;
    if (i < 16) {
      f = (b & c) | (~b & d);
      g = i;
    } else if (i < 32) {
      f = (d & b) | (~d & c);
      g = (5 * i + 1) & 15;
    } else if (i < 48) {
      f = b ^ c ^ d;
      g = (3 * i + 5) & 15;
    } else {
      f = c ^ (b | ~d);
      g = (7 * i) & 15;
    }
    const s = SHIFT[((i >> 4) << 2) | (i & 3)];
    const t = (a + f + K[i] + x[g]) | 0;
    a = d;
    d = c;
    c = b;
    b = (b + ((t << s) | (t >>> (32 - s)))) | 0;
  }
  return [a >>> 0, b >>> 0, c >>> 0, d >>> 0];
}

/**
 * Standard MD5 of `bytes`.
 * @param {Uint8Array} bytes
 * @returns {Uint8Array} 16 bytes
 */
export function md5(bytes) {
  const padded = new Uint8Array((((bytes.length + 8) >> 6) + 1) << 6);
  padded.set(bytes);
  padded[bytes.length] = 0x80;
  const view = new DataView(padded.buffer);
  // The length in bits as u64 LE; inputs here are far below 2^32 bits.
  view.setUint32(padded.length - 8, (bytes.length * 8) >>> 0, true);
  view.setUint32(padded.length - 4, Math.floor(bytes.length / 0x20000000), true);
  let state = MD5_INIT.slice();
  const x = new Uint32Array(16);
  for (let off = 0; off < padded.length; off += 64) {
    for (let i = 0; i < 16; i++) x[i] = view.getUint32(off + 4 * i, true);
    const r = md5Rounds(state, x);
    state = state.map((v, i) => (v + r[i]) >>> 0);
  }
  const out = new Uint8Array(16);
  const ov = new DataView(out.buffer);
  state.forEach((v, i) => ov.setUint32(4 * i, v, true));
  return out;
}

/**
 * The MAC SCP uses: `m = MD5(x ‖ y ‖ x ‖ y ‖ x ‖ y)` over the 8-byte LE
 * forms, then `m[0..8] XOR m[8..16]` read as u64 LE.
 * @param {bigint} x
 * @param {bigint} y
 * @returns {bigint}
 */
export function hmac64Md5(x, y) {
  const block = new Uint8Array(48);
  const xb = u64ToLe(x);
  const yb = u64ToLe(y);
  for (let off = 0; off < 48; off += 16) {
    block.set(xb, off);
    block.set(yb, off + 8);
  }
  const m = md5(block);
  return leToU64(m, 0) ^ leToU64(m, 8);
}

/**
 * skynet's older MAC: one MD5 compression (no padding, no feed-forward) of
 * the words `x.hi, x.lo, y.hi, y.lo` repeated four times, folded to
 * `(a ^ b) << 32 | (c ^ d)`. SCP does not use it; skynet's msgserver
 * login does.
 * @param {bigint} x
 * @param {bigint} y
 * @returns {bigint}
 */
export function hmac64(x, y) {
  const w = [Number(x >> 32n), Number(x & 0xffffffffn), Number(y >> 32n), Number(y & 0xffffffffn)];
  const block = new Uint32Array(16);
  for (let i = 0; i < 16; i++) block[i] = w[i & 3];
  const [a, b, c, d] = md5Rounds(MD5_INIT, block);
  return (BigInt((a ^ b) >>> 0) << 32n) | BigInt((c ^ d) >>> 0);
}

/**
 * skynet's `hmac_hash(secret, text) = hmac64(hashkey(text), secret)`.
 * @param {bigint} secret
 * @param {string | Uint8Array} text
 * @returns {bigint}
 */
export function hmacHash(secret, text) {
  return hmac64(hashkey(text), secret);
}

/**
 * The 32-byte RC4 key SCP derives from a DH secret:
 * `hmac64Md5(secret, 0) ‖ … ‖ hmac64Md5(secret, 3)`, each 8 bytes LE.
 * @param {bigint} secret
 * @returns {Uint8Array}
 */
export function rc4Key(secret) {
  const key = new Uint8Array(32);
  for (let i = 0; i < 4; i++) key.set(u64ToLe(hmac64Md5(secret, BigInt(i))), 8 * i);
  return key;
}

/** Standard RC4. One instance is one direction's keystream. */
export class Rc4 {
  /**
   * @param {Uint8Array} key 1 to 256 bytes
   */
  constructor(key) {
    if (!(key.length >= 1 && key.length <= 256)) throw new RangeError('RC4 key of 1..256 bytes');
    const s = new Uint8Array(256);
    for (let i = 0; i < 256; i++) s[i] = i;
    for (let i = 0, j = 0; i < 256; i++) {
      j = (j + s[i] + key[i % key.length]) & 0xff;
      const t = s[i];
      s[i] = s[j];
      s[j] = t;
    }
    this.s = s;
    this.i = 0;
    this.j = 0;
  }

  /**
   * RC4 keyed as SCP keys it, from a DH secret.
   * @param {bigint} secret
   * @returns {Rc4}
   */
  static fromSecret(secret) {
    return new Rc4(rc4Key(secret));
  }

  /**
   * XORs the next `src.length` keystream bytes over `src` into `dst`
   * (which may be `src` itself) and returns `dst`.
   * @param {Uint8Array} src
   * @param {Uint8Array} [dst=src]
   * @returns {Uint8Array}
   */
  apply(src, dst = src) {
    const s = this.s;
    let i = this.i;
    let j = this.j;
    for (let k = 0; k < src.length; k++) {
      i = (i + 1) & 0xff;
      const si = s[i];
      j = (j + si) & 0xff;
      const sj = s[j];
      s[i] = sj;
      s[j] = si;
      dst[k] = src[k] ^ s[(si + sj) & 0xff];
    }
    this.i = i;
    this.j = j;
    return dst;
  }
}
