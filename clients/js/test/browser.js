// Headless Chromium for the browser tests (and the chat demo's screenshot):
// Debian's `chromium` ($CHROMIUM, else /usr/bin/chromium) driven by
// playwright-core, with a fresh profile each launch.

import { existsSync } from 'node:fs';
import { bin } from './harness.js';

/** Where Chromium is. */
export const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';

let pw = null;
try {
  pw = await import('playwright-core');
} catch {
  // reported by `missing`
}

/** Why Chromium cannot be driven here, or null. */
export const missingBrowser = !existsSync(chromiumPath)
  ? `no Chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM)`
  : !pw
    ? "no 'playwright-core' package (npm ci in clients/js)"
    : null;

/** Why the browser tests cannot run here (prefixed SKIPPED), or false. */
export const browserSkip = !bin
  ? 'SKIPPED: no ringgate binary (build it, or set RINGGATE_BIN)'
  : missingBrowser
    ? `SKIPPED: ${missingBrowser}`
    : false;

/**
 * Chromium's flags: headless, and nothing that reaches out on its own (on a
 * closed network those connections are refused and can stall start-up).
 */
export const chromiumArgs = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Launches Chromium with a fresh profile (playwright makes and removes it).
 * @param {string[]} [extraArgs]
 */
export function launch(extraArgs = []) {
  return pw.chromium.launch({ executablePath: chromiumPath, headless: true, args: [...chromiumArgs, ...extraArgs] });
}
