// `tether demo --tls` in Chromium, the way a user would run it: the generated CA is trusted
// through the NSS database (certutil), never with --ignore-certificate-errors; the page is a
// secure context on https://, its WebSocket goes over wss:// through the proxy, and two
// people chat across it. A browser that does not trust the CA is refused.
// Run: TETHER_BIN=../../target/debug/tether node --test tls.test.mjs  (from tests/e2e)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { startDemo, launchBrowser, homeTrusting, newUser, eventually } from './harness.mjs';

let demo;
let browser;
const homes = [];
const errors = [];

before(async () => {
  demo = await startDemo({ tls: true });
  homes.push(homeTrusting(demo.caPath));
  browser = await launchBrowser({ home: homes[0] });
});

after(async () => {
  await browser?.close();
  await demo?.stop();
  for (const home of homes) rmSync(home, { recursive: true, force: true });
});

/** Opens the chat in a new context, joins `room` as `name`; records its WebSocket URLs. */
async function joinRoom(name, room) {
  const context = await newUser(browser, errors);
  const page = await context.newPage();
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  await page.goto(`${demo.base}/`);
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join-button');
  await page.waitForSelector('#conn[data-state="open"]');
  return { page, context, sockets };
}

test('the chat over https:// and wss:// in Chromium trusting the generated CA', async () => {
  assert.match(demo.base, /^https:\/\/localhost:\d+$/);
  const alice = await joinRoom('alice', 'tls');
  const bob = await joinRoom('bob', 'tls');

  for (const who of [alice, bob]) {
    const where = await who.page.evaluate(() => ({
      secure: window.isSecureContext,
      protocol: location.protocol,
    }));
    assert.deepEqual(where, { secure: true, protocol: 'https:' });
    assert.ok(who.sockets.length > 0, 'the page opened a WebSocket');
    for (const url of who.sockets) assert.equal(url, `wss://localhost:${demo.port}/ws`);
  }

  await alice.page.fill('#text', 'hello over wss');
  await alice.page.click('#send');
  await eventually('the message in the other page', async () => {
    const texts = await bob.page.$$eval('#messages li.msg .text', (els) => els.map((e) => e.textContent));
    return texts.includes('hello over wss');
  });

  // The dashboard works over https too: its API and its event stream go through the proxy.
  const dashboard = await alice.context.newPage();
  await dashboard.goto(`${demo.base}/_tether/`);
  await dashboard.waitForSelector('[data-backend="hub-1"]');
  await eventually('every backend up on the dashboard', () =>
    dashboard.$$eval('[data-backend][data-state="up"]', (rows) => rows.length === 3));

  await alice.context.close();
  await bob.context.close();
  assert.deepEqual(errors, [], 'no console errors');
});

test('a Chromium that does not trust the CA refuses the page', async () => {
  homes.push(homeTrusting());
  const stranger = await launchBrowser({ home: homes.at(-1) });
  try {
    const page = await stranger.newPage();
    await assert.rejects(page.goto(`${demo.base}/`), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await stranger.close();
  }
});
