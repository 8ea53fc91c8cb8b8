// The chat demo (examples/chat.rs with --ws and --http, its page in
// examples/chat-web/) in headless Chromium: two people chat, one drops
// (the page's buttons), says something while offline and is told what was
// said meanwhile once back; both see the same conversation, nothing lost or repeated.
// Skipped, saying why, without the example's binary (built by `cargo test`
// or `cargo build --example chat`) or without Chromium (see browser.js).

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { launch, missingBrowser } from './browser.js';
import { roomLines, say, startChat, waitLine, waitStatus } from './chat-page.js';
import { chatBin } from './harness.js';

const skip = !chatBin
  ? 'SKIPPED: no chat example (cargo build --example chat, or set RINGGATE_CHAT)'
  : missingBrowser
    ? `SKIPPED: ${missingBrowser}`
    : false;
if (skip) console.log(`chat demo test ${skip}`);

describe('the chat demo in Chromium', { skip }, () => {
  let browser;
  before(async () => {
    browser = await launch();
  });
  after(() => browser?.close());

  test('two people chat across a dropped connection and a spell offline', async (t) => {
    const url = await startChat(t);
    const alice = await browser.newPage();
    await alice.goto(`${url}?name=alice`);
    await waitStatus(alice, 'connected');
    const bob = await browser.newPage();
    await bob.goto(`${url}?name=bob`);
    await waitStatus(bob, 'connected');
    const bobId = await bob.evaluate(() => window.chat.client.id);
    await waitLine(alice, `* #${bobId} is now bob`);

    await say(alice, 'hi bob');
    await waitLine(bob, 'alice: hi bob');

    await bob.click('#drop');
    await waitLine(alice, '* bob is back (session resumed)');
    await waitStatus(bob, 'resumed');

    // Offline: what bob says waits in his page; what alice says waits at the gate.
    await bob.click('#offline');
    await waitLine(alice, '* bob lost the connection', 2);
    await say(alice, 'where did you go?');
    await waitLine(alice, 'alice: where did you go?');
    await say(bob, 'back soon');
    await waitStatus(bob, 'offline');
    assert.equal(await bob.locator('#log li.pending').count(), 1);
    await bob.click('#offline');
    await waitLine(alice, 'bob: back soon');
    await say(alice, 'bye');
    await waitLine(bob, 'alice: bye');
    await waitLine(alice, 'alice: bye');

    const seenByAlice = await roomLines(alice);
    const seenByBob = await roomLines(bob);
    const joined = seenByAlice.findIndex((l) => l.startsWith(`* #${bobId} joined`));
    assert.ok(joined > 0, seenByAlice.join('\n'));
    assert.deepEqual(seenByBob, seenByAlice.slice(joined));
    assert.deepEqual(seenByBob.slice(1), [
      `* #${bobId} is now bob`,
      'alice: hi bob',
      '* bob lost the connection',
      '* bob is back (session resumed)',
      '* bob lost the connection',
      'alice: where did you go?',
      '* bob is back (session resumed)',
      'bob: back soon',
      'alice: bye',
    ]);
    assert.equal(await bob.locator('#log li.pending').count(), 0);
    assert.equal(await bob.locator('#log li.local', { hasText: 'session resumed' }).count(), 2);
  });
});
