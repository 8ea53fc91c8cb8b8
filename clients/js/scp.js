// ringgate's browser client for SCP, the stable connection protocol: one
// module to import. See README.md.

export * from './crypt.js';
export * from './messages.js';
export * from './session.js';
export * from './packets.js';
export * from './client.js';
