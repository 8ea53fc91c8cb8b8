// Driving the chat demo's page (examples/chat-web/) from playwright: for its
// test and for the screenshot in docs/.

import { chatBin, freePort, startProcess } from './harness.js';

/** Starts the chat example; returns the page's URL. */
export async function startChat(t) {
  const [listen, ws, http] = [await freePort(), await freePort(), await freePort()];
  await startProcess(t, chatBin, ['--listen', `127.0.0.1:${listen}`, '--ws', `127.0.0.1:${ws}`, '--http', `127.0.0.1:${http}`], http);
  return `http://127.0.0.1:${http}/`;
}

/** The room's lines a page shows (not its own notes, not what is still on its way). */
export const roomLines = (page) =>
  page.$$eval('#log li:not(.local):not(.pending)', (lis) => lis.map((li) => li.textContent).filter((t) => !t.startsWith('welcome')));

/** Waits until `page` shows the room line `text` `count` times. */
export function waitLine(page, text, count = 1) {
  return page.waitForFunction(
    ([text, count]) => [...document.querySelectorAll('#log li:not(.pending)')].filter((li) => li.textContent === text).length >= count,
    [text, count],
    { timeout: 15000 },
  );
}

/** Waits until the status line of `page` starts with `prefix`. */
export function waitStatus(page, prefix) {
  return page.waitForFunction((p) => document.getElementById('status').textContent.startsWith(p), prefix, { timeout: 15000 });
}

/** Types `text` into the page's message box and sends it. */
export async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#say button');
}
