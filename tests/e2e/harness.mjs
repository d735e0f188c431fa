// Starting `tether demo` and headless Chromium for the end-to-end tests, so each test reads
// as what a user does. Nothing is mocked: the real binary, the real browser, loopback only.

import { spawn, execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { request as httpsRequest } from 'node:https';
import { mkdirSync, mkdtempSync, createWriteStream, existsSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '../..');
/** Screenshots and the demo's log land here (the workspace's target dir, not committed). */
export const outDir = join(repo, 'target', 'e2e');

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

/** A free loopback port, found by binding port 0 and letting it go. */
export function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

/** Waits until `check()` returns a truthy value, or throws `what` after `ms`. */
export async function eventually(what, check, ms = 15000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await check();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

/**
 * `GET url` over https trusting only the CA in `caPem` (Node's fetch cannot be given a CA);
 * the parsed JSON body.
 */
function getJsonTrusting(url, caPem) {
  return new Promise((ok, fail) => {
    const req = httpsRequest(url, { ca: caPem, servername: new URL(url).hostname }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        try { ok(JSON.parse(body)); } catch (error) { fail(error); }
      });
    });
    req.on('error', fail);
    req.end();
  });
}

/**
 * Starts `$TETHER_BIN demo --listen 127.0.0.1:<free port>` and waits until the proxy reports
 * every hub up. Its output goes to target/e2e/demo.log (demo-tls.log with `tls`);
 * `adminToken` is the proxy's admin token the demo printed (the dashboard asks for it before
 * a drain).
 *
 * With `{ tls: true }` it runs `demo --tls --tls-dir DIR`: `base` is then
 * `https://localhost:<port>` and `caPath` the CA the demo generated and printed.
 */
export async function startDemo({ tls = false } = {}) {
  const bin = process.env.TETHER_BIN;
  if (!bin) throw new Error('set TETHER_BIN to the tether binary (e.g. target/release/tether)');
  mkdirSync(outDir, { recursive: true });
  const port = await freePort();
  const base = tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;
  const args = ['demo', '--listen', `127.0.0.1:${port}`];
  const tlsDir = tls ? mkdtempSync(join(tmpdir(), 'tether-e2e-tls-')) : undefined;
  if (tls) args.push('--tls', '--tls-dir', tlsDir);
  const log = createWriteStream(join(outDir, tls ? 'demo-tls.log' : 'demo.log'));
  const child = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TETHER_LOG: process.env.TETHER_LOG ?? 'info' },
  });
  child.stdout.pipe(log);
  child.stderr.pipe(log);
  let printed = '';
  child.stdout.on('data', (chunk) => { printed += chunk; });
  const adminToken = () => printed.match(/admin token\s+(\S+)/)?.[1];
  // The CA is printed as `  ca         /path/ca.pem`.
  const caPath = () => printed.match(/^\s+ca\s+(\S+)$/m)?.[1];
  let exited = null;
  child.once('exit', (code, signal) => { exited = { code, signal }; });
  await eventually('every hub up behind the proxy', async () => {
    if (exited) throw new Error(`tether demo exited early (${JSON.stringify(exited)}); see target/e2e/demo.log`);
    if (tls && !caPath()) return false;
    const url = `${base}/_tether/api/backends`;
    const backends = tls
      ? await getJsonTrusting(url, readFileSync(caPath()))
      : await (await fetch(url)).json();
    return backends.length === 3 && backends.every((b) => b.state === 'up') && adminToken();
  });
  return {
    base,
    port,
    caPath: tls ? caPath() : undefined,
    adminToken: adminToken(),
    async stop() {
      if (!exited) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await gone;
        clearTimeout(timer);
      }
      if (tlsDir) rmSync(tlsDir, { recursive: true, force: true });
    },
  };
}

/**
 * Debian's Chromium, headless; Playwright never downloads a browser here. With `home`, the
 * browser runs with that HOME, so it reads the certificates it trusts from the NSS database
 * in `home/.pki/nssdb` (see `homeTrusting`).
 */
export function launchBrowser({ home } = {}) {
  const env = home ? { ...process.env, HOME: home } : undefined;
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, env });
}

/**
 * A fresh HOME whose NSS database (the one Chromium on Linux reads) trusts the CA in `caPath`
 * to identify websites, as a user does with `certutil` (libnss3-tools). Without `caPath`: an
 * empty database that trusts nothing extra.
 */
export function homeTrusting(caPath) {
  const home = mkdtempSync(join(tmpdir(), 'tether-e2e-home-'));
  const db = `sql:${join(home, '.pki', 'nssdb')}`;
  mkdirSync(join(home, '.pki', 'nssdb'), { recursive: true });
  execFileSync('certutil', ['-N', '--empty-password', '-d', db]);
  if (caPath) execFileSync('certutil', ['-A', '-d', db, '-t', 'C,,', '-n', 'tether-demo', '-i', caPath]);
  return home;
}

const FIREFOX = process.env.FIREFOX_BIN ?? '/usr/bin/firefox-esr';

/** Whether a Firefox to test with is installed (`apt-get install -y firefox-esr`). */
export const haveFirefox = existsSync(FIREFOX);

/**
 * Debian's Firefox, headless, driven over WebDriver BiDi by puppeteer-core (Playwright only
 * drives its own patched Firefox builds, which we never download).
 */
export function launchFirefox() {
  return puppeteer.launch({ browser: 'firefox', executablePath: FIREFOX, headless: true });
}

/**
 * A fresh browser context (its own cookies and storage, like a second user) whose pages
 * record every console error and uncaught exception into `errors`.
 */
export async function newUser(browser, errors, viewport = { width: 900, height: 860 }) {
  const context = await browser.newContext({ viewport });
  context.on('page', (page) => watch(page, errors));
  return context;
}

function watch(page, errors) {
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`${page.url()}: console.error: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`${page.url()}: uncaught: ${error.message}`));
}
