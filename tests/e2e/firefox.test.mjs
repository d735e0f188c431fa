// The same story in Firefox: two people in one room on different hubs, one hub killed, the
// page back on another hub with every message once.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startDemo, launchFirefox, haveFirefox, eventually, outDir } from './harness.mjs';

// On a developer's machine without Firefox this is skipped, and says so; in CI (where
// scripts/provision installs firefox-esr) it never is: a missing browser fails the run.
const skip = haveFirefox || process.env.CI ? false : 'Firefox is not installed (apt-get install -y firefox-esr, or set FIREFOX_BIN)';
let demo;
let browser;
const errors = [];

before(async () => {
  if (skip) return;
  demo = await startDemo();
  browser = await launchFirefox();
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

async function joinRoom(name, room) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: console.error: ${m.text()}`); });
  page.on('pageerror', (e) => errors.push(`${name}: uncaught: ${e.message}`));
  await page.goto(`${demo.base}/`);
  await page.$eval('#name', (el, v) => { el.value = v; }, name);
  await page.$eval('#room', (el, v) => { el.value = v; }, room);
  await page.click('#join-button');
  await page.waitForSelector('#conn[data-state="open"]');
  return { page, context, node: await hubOf(page) };
}

async function hubOf(page) {
  await page.waitForFunction(() => /^hub-\d$/.test(document.getElementById('node').textContent));
  return page.$eval('#node', (el) => el.textContent);
}

async function say(page, text) {
  await page.$eval('#text', (el, v) => { el.value = v; }, text);
  await page.click('#send');
}

function textsOf(page) {
  return page.$$eval('#messages li.msg[data-offset] .text', (els) => els.map((e) => e.textContent));
}

test('firefox: killed hub, resumed on another, every message exactly once', { skip }, async () => {
  const room = `e2e-ff-${Date.now()}`;
  const ann = await joinRoom('ann', room);
  const ben = await joinRoom('ben', room);
  assert.notEqual(ann.node, ben.node, 'the two pages land on different hubs');

  await say(ann.page, 'ann: hi');
  await say(ben.page, 'ben: hi');
  const killed = ann.node;
  const lost = Number(await ann.page.$eval('#conn', (el) => el.dataset.lost));
  await ann.page.click('#kill');
  await ann.page.waitForFunction((n) => Number(document.getElementById('conn').dataset.lost) > n, {}, lost);
  await say(ben.page, 'ben: while ann is away');
  await ann.page.waitForSelector('#conn[data-state="open"]');
  assert.notEqual(await hubOf(ann.page), killed, 'ann is back on a live hub');
  await say(ann.page, 'ann: back');

  const all = ['ann: hi', 'ben: hi', 'ben: while ann is away', 'ann: back'];
  for (const { page } of [ann, ben]) {
    const shown = await eventually('every message on the page', async () => {
      const texts = await textsOf(page);
      return all.every((t) => texts.includes(t)) && texts;
    });
    for (const text of all) {
      assert.equal(shown.filter((t) => t === text).length, 1, `"${text}" once: ${JSON.stringify(shown)}`);
    }
  }
  await ann.page.screenshot({ path: join(outDir, 'firefox-chat.png') });

  const dashboard = await ann.context.newPage();
  await dashboard.goto(`${demo.base}/_tether/`);
  await dashboard.waitForSelector('[data-backend="hub-3"]');
  await dashboard.screenshot({ path: join(outDir, 'firefox-dashboard.png') });
  assert.deepEqual(errors, [], 'no console errors in Firefox');
});
