// The dashboard of a `tether proxy` whose reads need the admin token (`read = "token"`): the
// page asks for the token once, streams through a single-use ticket (EventSource cannot send
// a header), and keeps the token for the tab across a reload. The real binary and Chromium.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { launchBrowser, newUser, eventually, freePort } from './harness.mjs';

const TOKEN = 'e2e-admin-token-0123456789abcdef';
let proxy;
let base;
let browser;

before(async () => {
  const bin = process.env.TETHER_BIN;
  if (!bin) throw new Error('set TETHER_BIN to the tether binary');
  const dir = mkdtempSync(join(tmpdir(), 'tether-e2e-token-'));
  writeFileSync(join(dir, 'admin.token'), `${TOKEN}\n`);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  // The backend need not exist: the dashboard lists it, down.
  writeFileSync(join(dir, 'proxy.toml'), `[listen]
addr = "127.0.0.1:${port}"
[admin]
enabled = false
stats_uri = "/_tether/"
token_file = "admin.token"
read = "token"
[[backend]]
name = "b1"
addr = "127.0.0.1:${await freePort()}"
`);
  proxy = spawn(bin, ['proxy', '--config', join(dir, 'proxy.toml')], { stdio: 'ignore' });
  await eventually('the proxy listening', async () => (await fetch(`${base}/_tether/`)).ok);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  proxy?.kill('SIGTERM');
});

test('with read = "token" the dashboard asks once, then streams through a ticket', async () => {
  const anonymous = await fetch(`${base}/_tether/api/backends`);
  assert.equal(anonymous.status, 401, 'reads are locked');
  const errors = [];
  const context = await newUser(browser, errors);
  const page = await context.newPage();
  const streams = [];
  page.on('request', (r) => { if (r.url().includes('/api/events')) streams.push(r.url()); });
  await page.goto(`${base}/_tether/`);
  // The stream is refused, so the page asks for the token before it can show anything.
  await page.waitForSelector('#auth[open]');
  await page.fill('#auth-token', TOKEN);
  await page.click('#auth-ok');
  await page.waitForSelector('[data-backend="b1"]');
  await page.waitForSelector('#live[data-state="live"]');
  // A reload keeps the token for the tab: no second question, the stream comes back.
  await page.reload();
  await page.waitForSelector('#live[data-state="live"]');
  assert.equal(await page.$('#auth[open]'), null, 'the token was asked for once');
  assert.ok(await page.isVisible('#forget'), 'the page offers to forget the token');
  // The ticket the page used is spent: the same URL opens nothing.
  const used = streams.find((url) => url.includes('api/events?ticket='));
  assert.ok(used, `the page opened the stream with a ticket: ${streams}`);
  assert.equal((await fetch(used)).status, 401, 'a ticket opens one stream only');
  await context.close();
  // Expected: the 401s that made the page ask for the token and buy a ticket, and the 503s of
  // the page's poll of /api/demo/hubs, which goes to the backend (absent here, a hub in the demo).
  const unexpected = errors.filter((e) => !/status of (401|503)/.test(e));
  assert.deepEqual(unexpected, [], 'no other console errors');
});
