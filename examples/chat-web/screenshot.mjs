// Takes docs/chat-demo.png: three people in the chat demo, one of them back
// from a spell offline, side by side. Needs the chat example built
// (`cargo build --example chat`), `npm ci` in clients/js and Chromium.
//
//   node examples/chat-web/screenshot.mjs [OUT.png]

import { launch, missingBrowser } from '../../clients/js/test/browser.js';
import { chatBin, root } from '../../clients/js/test/harness.js';
import { roomLines, say, startChat, waitLine, waitStatus } from '../../clients/js/test/chat-page.js';

const out = process.argv[2] ?? `${root}docs/chat-demo.png`;
if (!chatBin || missingBrowser) throw new Error(missingBrowser ?? 'no chat example: cargo build --example chat');

const cleanups = [];
const t = { after: (fn) => cleanups.push(fn) };
const browser = await launch();
try {
  const url = await startChat(t);
  const size = { width: 400, height: 520 };
  const people = {};
  for (const name of ['alice', 'bob', 'carol']) {
    const page = await browser.newPage({ viewport: size });
    await page.goto(`${url}?name=${name}`);
    await waitStatus(page, 'connected');
    people[name] = page;
  }
  const { alice, bob, carol } = people;
  await waitLine(alice, '* #3 is now carol');
  await say(alice, 'anyone up for a raid tonight?');
  await say(bob, 'sure, 9pm?');
  await waitLine(carol, 'bob: sure, 9pm?');
  await carol.click('#offline');
  await waitLine(alice, '* carol lost the connection');
  await say(alice, '9pm works. carol?');
  await waitLine(alice, 'alice: 9pm works. carol?');
  await say(carol, 'count me in');
  await carol.click('#offline');
  await waitLine(alice, 'carol: count me in');
  await say(bob, 'welcome back carol');
  for (const p of [alice, bob, carol]) await waitLine(p, 'bob: welcome back carol');
  console.log((await roomLines(carol)).join('\n'));

  // The three pages side by side, in one picture.
  const shots = [];
  for (const p of [alice, bob, carol]) shots.push((await p.screenshot()).toString('base64'));
  const board = await browser.newPage({ viewport: { width: 3 * size.width + 40, height: size.height + 20 } });
  await board.setContent(
    `<body style="margin:0;padding:10px;display:flex;gap:10px;background:#9aa4b5">${shots
      .map((s) => `<img style="box-shadow:0 1px 4px #0005" src="data:image/png;base64,${s}">`)
      .join('')}</body>`,
  );
  await board.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.close();
  for (const fn of cleanups.reverse()) await fn();
}
