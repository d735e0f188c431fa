// `tether demo` seen by two people in two browsers: they chat across hubs, one of them has
// the hub under them killed, and the page comes back on another hub with every message
// exactly once. Run: TETHER_BIN=../../target/release/tether node --test  (from tests/e2e)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { startDemo, launchBrowser, newUser, eventually, outDir, repo } from './harness.mjs';

let demo;
let browser;
const errors = [];

before(async () => {
  demo = await startDemo();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await demo?.stop();
});

/** Opens the chat page in a new context, joins `room` as `name`, waits for a hub. */
async function joinRoom(name, room) {
  const context = await newUser(browser, errors);
  const page = await context.newPage();
  await page.goto(`${demo.base}/`);
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#join-button');
  await page.waitForSelector('#conn[data-state="open"]');
  const node = await hubOf(page);
  return { page, context, node };
}

async function hubOf(page) {
  await page.waitForFunction(() => /^hub-\d$/.test(document.getElementById('node').textContent));
  return page.textContent('#node');
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

/** The texts of the page's messages in the order shown, with their offsets. */
function messagesOf(page) {
  return page.$$eval('#messages li.msg', (items) => items.map((li) => ({
    offset: li.dataset.offset === undefined ? null : Number(li.dataset.offset),
    text: li.querySelector('.text').textContent,
  })));
}

async function waitForTexts(page, texts) {
  await eventually(`${texts.length} messages on the page`, async () => {
    const shown = (await messagesOf(page)).filter((m) => m.offset !== null).map((m) => m.text);
    return texts.every((t) => shown.includes(t));
  });
}

/** Publishes `count` messages through the proxy's HTTP API, one every `everyMs`. */
async function publishBurst(channel, count, everyMs) {
  for (let i = 1; i <= count; i++) {
    const response = await fetch(`${demo.base}/api/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ channel, data: { user: 'ticker', text: `tick ${i}`, at: Date.now() } }),
    });
    assert.equal(response.status, 200, await response.text());
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

function assertExactlyOnceInOrder(shown, expected, who) {
  const texts = shown.map((m) => m.text);
  for (const text of expected) {
    assert.equal(texts.filter((t) => t === text).length, 1, `${who} shows "${text}" exactly once: ${JSON.stringify(texts)}`);
  }
  assert.ok(shown.every((m) => m.offset !== null), `${who} has no message left pending: ${JSON.stringify(shown)}`);
  const offsets = shown.map((m) => m.offset);
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), `${who} shows messages in offset order`);
  assert.equal(new Set(offsets).size, offsets.length, `${who} shows each offset once`);
}

test('killed hub: the page resumes on another hub with every message exactly once', async () => {
  const room = `e2e-${Date.now()}`;
  const alice = await joinRoom('alice', room);
  const bob = await joinRoom('bob', room);
  assert.notEqual(alice.node, bob.node, 'least-connections puts the two browsers on different hubs');

  const before = ['hello from alice', 'hello from bob'];
  await say(alice.page, before[0]);
  await say(bob.page, before[1]);
  await waitForTexts(alice.page, before);
  await waitForTexts(bob.page, before);

  // Crash alice's hub from her page; while she is away, bob keeps talking.
  const killed = alice.node;
  const lostBefore = Number(await alice.page.getAttribute('#conn', 'data-lost'));
  await alice.page.click('#kill');
  await alice.page.waitForFunction(
    (n) => Number(document.getElementById('conn').dataset.lost) > n, lostBefore);
  const during = ['bob 1 while alice is away', 'bob 2 while alice is away', 'bob 3 while alice is away'];
  for (const text of during) await say(bob.page, text);

  await alice.page.waitForSelector('#conn[data-state="open"]');
  const resumedOn = await hubOf(alice.page);
  assert.notEqual(resumedOn, killed, 'alice is back on a hub that is still alive');
  await alice.page.waitForSelector('#messages li.notice.good');
  const notice = await alice.page.textContent('#messages li.notice.good');
  assert.match(notice, new RegExp(`^Back on ${resumedOn} after`), notice);

  const afterwards = ['alice is back', 'bob sees her'];
  await say(alice.page, afterwards[0]);
  await say(bob.page, afterwards[1]);
  const all = [...before, ...during, ...afterwards];
  await waitForTexts(alice.page, all);
  await waitForTexts(bob.page, all);

  assertExactlyOnceInOrder(await messagesOf(alice.page), all, 'alice');
  assertExactlyOnceInOrder(await messagesOf(bob.page), all, 'bob');
  const stats = await alice.page.$eval('#stats', (el) => ({ ...el.dataset }));
  assert.equal(stats.duplicates, '0', 'the client handed alice no duplicate');
  assert.equal(stats.reconnects, '1');
  // Whatever bob said before alice was back came from history, and the notice says how much.
  if (Number(stats.replayed) > 0) assert.match(notice, /filled in from history/, notice);
  else assert.match(notice, /nothing missing/, notice);

  mkdirSync(outDir, { recursive: true });
  await alice.page.screenshot({ path: join(outDir, 'chat-alice.png') });
  await bob.page.screenshot({ path: join(outDir, 'chat-bob.png') });

  // The dashboard shows the three backends and the killed one coming back.
  const dashboard = await alice.context.newPage();
  await dashboard.goto(`${demo.base}/_tether/`);
  await dashboard.waitForSelector('[data-backend="hub-1"]');
  await eventually(`${killed} back up on the dashboard`, () =>
    dashboard.$$eval('[data-backend][data-state="up"]', (rows) => rows.length === 3), 20000);
  // Traffic through the proxy shows up as bytes and, read from the hubs, as messages per second.
  const burst = publishBurst(`room:${room}`, 40, 75);
  await eventually('message and byte rates on the dashboard', () => dashboard.evaluate(() => {
    const positive = (sel) => [...document.querySelectorAll(sel)].some((e) => parseFloat(e.textContent) > 0);
    return positive('[data-backend] .msgs .value') && positive('[data-backend] .rate .value');
  }), 10000);
  await dashboard.screenshot({ path: join(outDir, 'dashboard.png'), fullPage: true });
  await burst;

  if (process.env.TETHER_DOCS_IMG) {
    mkdirSync(join(repo, 'docs', 'img'), { recursive: true });
    copyFileSync(join(outDir, 'dashboard.png'), join(repo, 'docs', 'img', 'dashboard.png'));
  }
  await alice.context.close();
  await bob.context.close();
  assert.deepEqual(errors, [], 'no console errors on any page');
});

test('cut connection: what was said meanwhile is replayed from history, once, and the page says so', async () => {
  const room = `e2e-cut-${Date.now()}`;
  const carol = await joinRoom('carol', room);
  const dave = await joinRoom('dave', room);
  await say(carol.page, 'hi dave');
  await waitForTexts(dave.page, ['hi dave']);

  // The page holds the line down for two seconds; dave talks in the meantime.
  await carol.page.click('#cut');
  await carol.page.waitForSelector('#conn[data-state="closed"]');
  const during = ['dave 1 while carol is cut off', 'dave 2 while carol is cut off'];
  for (const text of during) await say(dave.page, text);
  await waitForTexts(dave.page, during);

  await carol.page.waitForSelector('#conn[data-state="open"]');
  await carol.page.waitForSelector('#messages li.notice.good');
  const notice = await carol.page.textContent('#messages li.notice.good');
  assert.match(notice, /2 messages sent while you were away were filled in from history/, notice);
  const all = ['hi dave', ...during];
  await waitForTexts(carol.page, all);
  assertExactlyOnceInOrder(await messagesOf(carol.page), all, 'carol');
  const replayed = await carol.page.$$eval('#messages li.msg.replayed .text', (els) => els.map((e) => e.textContent));
  assert.deepEqual(replayed, during, 'exactly the messages sent while away are marked as replayed');
  const stats = await carol.page.$eval('#stats', (el) => ({ ...el.dataset }));
  assert.equal(stats.duplicates, '0');
  assert.equal(stats.replayed, '2');

  await say(carol.page, 'back, and I saw both');
  await waitForTexts(dave.page, ['back, and I saw both']);
  await carol.page.screenshot({ path: join(outDir, 'chat-carol.png') });
  if (process.env.TETHER_DOCS_IMG) {
    mkdirSync(join(repo, 'docs', 'img'), { recursive: true });
    copyFileSync(join(outDir, 'chat-carol.png'), join(repo, 'docs', 'img', 'chat.png'));
  }
  await carol.context.close();
  await dave.context.close();
  assert.deepEqual(errors, [], 'no console errors on any page');
});

test('drained hub: the page moves to another hub and loses nothing', async () => {
  const room = `e2e-drain-${Date.now()}`;
  const erin = await joinRoom('erin', room);
  const finn = await joinRoom('finn', room);
  await say(erin.page, 'erin before the drain');
  await waitForTexts(finn.page, ['erin before the drain']);

  const drained = erin.node;
  await erin.page.click('#drain');
  await erin.page.waitForSelector('#messages li.notice.warn');
  // The hub closes erin within its 3 s window; meanwhile finn talks.
  await say(finn.page, 'finn during the drain');
  await eventually(`erin moved off ${drained}`, async () =>
    (await erin.page.getAttribute('#conn', 'data-state')) === 'open'
      && /^hub-\d$/.test(await erin.page.textContent('#node'))
      && (await erin.page.textContent('#node')) !== drained, 10000);
  await say(erin.page, 'erin after the drain');
  const all = ['erin before the drain', 'finn during the drain', 'erin after the drain'];
  await waitForTexts(erin.page, all);
  await waitForTexts(finn.page, all);
  assertExactlyOnceInOrder(await messagesOf(erin.page), all, 'erin');
  assertExactlyOnceInOrder(await messagesOf(finn.page), all, 'finn');
  await erin.context.close();
  await finn.context.close();
  assert.deepEqual(errors, [], 'no console errors on any page');
});

test('cut off in a room that was empty: the replay is complete and the hub confirms it', async () => {
  const room = `e2e-empty-${Date.now()}`;
  const gus = await joinRoom('gus', room);
  const hal = await joinRoom('hal', room);
  await gus.page.click('#cut');
  await gus.page.waitForSelector('#conn[data-state="closed"]');
  await say(hal.page, 'first words in the room');
  await waitForTexts(gus.page, ['first words in the room']);
  const notice = await gus.page.$$eval('#messages li.notice', (els) => els.at(-1).textContent);
  await gus.context.close();
  await hal.context.close();
  assert.match(notice, /1 message sent while you were away was filled in from history/, notice);
});

test('dashboard drains a backend and enables it again', async () => {
  // The first drain meets a 401, which Chromium logs as a failed resource: that one is expected.
  const pageErrors = [];
  const context = await newUser(browser, pageErrors, { width: 390, height: 844 });
  const page = await context.newPage();
  await page.goto(`${demo.base}/_tether/`);
  const row = '[data-backend="hub-3"]';
  await page.waitForSelector(`${row}[data-state="up"]`);
  const anonymous = await fetch(`${demo.base}/_tether/api/backends/hub-3/drain`, { method: 'POST' });
  assert.equal(anonymous.status, 401, 'the proxy refuses a drain without the admin token');
  await page.click(`${row} button.toggle`);
  // The page asks for the token once, keeps it for the tab, and the drain goes through.
  await page.waitForSelector('#auth[open]');
  await page.fill('#auth-token', demo.adminToken);
  await page.click('#auth-ok');
  await page.waitForSelector(`${row}[data-state="draining"]`);
  const api = await (await fetch(`${demo.base}/_tether/api/backends`)).json();
  assert.equal(api.find((b) => b.name === 'hub-3').state, 'draining', 'the proxy itself reports it');
  await page.click(`${row} button.toggle`);
  await page.waitForSelector(`${row}[data-state="up"]`);
  assert.equal(await page.$('#auth[open]'), null, 'the token was asked for once');
  await page.screenshot({ path: join(outDir, 'dashboard-phone.png'), fullPage: true });
  await context.close();
  assert.deepEqual(pageErrors.filter((e) => !/status of 401/.test(e)), [], 'no other console errors');
  assert.deepEqual(errors, [], 'no console errors on any page');
});

test('after a dashboard request, the next request from the same browser still reaches the hubs', async () => {
  const context = await newUser(browser, []);
  const page = await context.newPage();
  await page.goto(`${demo.base}/_tether/`);
  await page.waitForSelector('[data-backend]');
  const statuses = await page.evaluate(async () => {
    const out = [];
    for (let i = 0; i < 5; i++) {
      await fetch('/_tether/api/backends');
      out.push((await fetch('/chat.css')).status);
    }
    return out;
  });
  await context.close();
  assert.deepEqual(statuses, [200, 200, 200, 200, 200]);
});
