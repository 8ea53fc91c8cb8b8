// The chat page: one SCP session over a WebSocket to the chat example's
// `--ws` door (see examples/chat.rs), through the resumable client of
// clients/js. Messages are u16 packets of UTF-8 text; `/name NAME` sets ours.
// "Drop connection" closes the WebSocket under the session; "Go offline"
// also keeps it from reconnecting until "Go online". Either way the client
// resumes the session and nothing said meanwhile, by us or to us, is lost.
// URL parameters: `name`, `ws` (the door's URL).

import { PacketReader, ScpClient, encodePacket, webSocketTransport } from './js/scp.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const { wsPort } = await (await fetch('config.json')).json();
const url = params.get('ws') ?? `ws://${location.hostname}:${wsPort}/`;

const log = $('log');
function line(text, kind) {
  const li = document.createElement('li');
  li.textContent = text;
  if (kind) li.className = kind;
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(li);
  if (atEnd) log.scrollTop = log.scrollHeight;
  return li;
}
function status(text, state) {
  $('status').textContent = text;
  $('status').className = state;
}

// The WebSocket of the current connection, for the drop button. While
// offline, a connection attempt gets nowhere until we are back online
// (`wakeUp` ends it, and the client tries again).
let socket = null;
let offline = false;
let wakeUp = null;
class Tracked extends WebSocket {
  constructor(...args) {
    super(...args);
    socket = this;
  }
}
const webSocket = webSocketTransport(url, { WebSocket: Tracked });
function connect(handlers) {
  if (offline) {
    wakeUp = () => handlers.onclose(new Error('offline (by request)'));
    return { send() {}, close: () => (wakeUp = null) };
  }
  return webSocket(handlers);
}

const client = new ScpClient({ connect, backoff: { initial: 250, max: 4000 } });
const reader = new PacketReader();
const decoder = new TextDecoder();
const encoder = new TextEncoder();
let name = params.get('name') || `guest${Math.floor(Math.random() * 900 + 100)}`;
$('name').value = name;
// Lines we sent that have not come back from the room yet.
const pending = [];

// Whether the last connection carried the session (so that a failed
// attempt after it is not reported as another loss).
let up = false;
client.on('open', ({ id }) => {
  up = true;
  status(`connected · session #${id}`, 'open');
  send(`/name ${name}`);
});
client.on('data', (bytes) => {
  for (const p of reader.push(bytes)) {
    const text = decoder.decode(p);
    const own = text.startsWith(`${name}: `);
    if (own && pending.length) pending.shift().remove();
    line(text, text.startsWith('* ') || text.startsWith('welcome') ? 'system' : own ? 'mine' : '');
  }
});
client.on('disconnect', ({ delay }) => {
  status(offline ? 'offline · the session waits at the gate' : `dropped · retrying in ${(delay / 1000).toFixed(1)} s`, 'waiting');
  if (up) line('connection lost; the session waits at the gate', 'local');
  up = false;
});
client.on('resume', ({ resent }) => {
  up = true;
  status(`resumed · session #${client.id}`, 'open');
  line(`session resumed on a new connection${resent ? ` (${resent} bytes sent again)` : ''}; what was said meanwhile follows`, 'local');
});
client.on('error', (e) => {
  status(`session over (${e.code})`, 'closed');
  line(`the session cannot go on: ${e.message}; reload to start a new one`, 'local');
});

function send(text) {
  client.send(encodePacket(encoder.encode(text)));
}

$('say').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  $('text').value = '';
  send(text);
  // Shown until the room's copy arrives (at once, or after a resume).
  pending.push(line(`${name}: ${text}`, 'mine pending'));
});
$('name').addEventListener('change', () => {
  const next = $('name').value.trim().slice(0, 24);
  if (!next || next === name) return;
  name = next;
  send(`/name ${name}`);
});
$('drop').addEventListener('click', () => socket?.close());
$('offline').addEventListener('click', () => {
  offline = !offline;
  $('offline').textContent = offline ? 'Go online' : 'Go offline';
  if (offline) socket?.close();
  else {
    const wake = wakeUp;
    wakeUp = null;
    wake?.();
  }
});

// For tests and for a look from the console.
window.chat = { client, send, drop: () => socket?.close() };
