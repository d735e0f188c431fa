// Real `tether hub` processes for the client's tests (binary from $TETHER_BIN), and the
// small helpers every test file shares. Every hub started here is killed when the file ends.
import { after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, readFileSync, readdirSync } from 'node:fs';

export const BIN = process.env.TETHER_BIN ?? `${process.env.CARGO_TARGET_DIR ?? '../../target'}/debug/tether`;
export const REDIS = process.env.TETHER_TEST_REDIS ?? 'redis://127.0.0.1:6379/';
const hubs = new Set();

after(() => {
  for (const hub of hubs) {
    // A hub frozen by a test that failed midway must be thawed to die.
    hub.proc.kill('SIGCONT');
    hub.proc.kill('SIGKILL');
  }
});

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it holds (true) or `limitMs` passes (false). */
export async function eventually(probe, limitMs = 10_000) {
  const deadline = Date.now() + limitMs;
  for (;;) {
    if (await probe()) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

/**
 * `promise`, or a rejection saying it was still pending after `limitMs`: a promise that
 * never settles fails the test instead of hanging it.
 */
export function within(promise, limitMs, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still pending after ${limitMs} ms`)), limitMs);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** Starts `tether hub` and waits for /health. */
export async function startHub(name, extraArgs = []) {
  assert.ok(existsSync(BIN), `hub binary not found at ${BIN}; build with cargo build -p tether and set TETHER_BIN`);
  const port = await freePort();
  const args = ['hub', '--listen', `127.0.0.1:${port}`, '--name', name, ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, TETHER_LOG: 'warn' } });
  const base = `http://127.0.0.1:${port}`;
  const hub = { name, proc, base, url: `ws://127.0.0.1:${port}/ws`, exited: new Promise((r) => proc.on('exit', r)) };
  hubs.add(hub);
  const up = await eventually(async () => {
    try {
      return (await fetch(`${base}/health`)).ok;
    } catch {
      return false;
    }
  });
  assert.ok(up, `hub ${name} did not come up`);
  return hub;
}

/**
 * Freezes `hub` with SIGSTOP: its sockets stay open and the kernel still completes TCP
 * handshakes, but nothing answers — a dead link as a client sees it. Resolves once every
 * thread of the process is stopped (a thread the signal has not reached yet may still
 * answer a frame; on a loaded machine that takes milliseconds). Linux: reads /proc.
 */
export async function freeze(hub) {
  hub.proc.kill('SIGSTOP');
  const stopped = await eventually(() => readdirSync(`/proc/${hub.proc.pid}/task`).every((task) => {
    const stat = readFileSync(`/proc/${hub.proc.pid}/task/${task}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('T');
  }), 5_000);
  assert.ok(stopped, `hub ${hub.name} did not stop`);
}

export function thaw(hub) {
  hub.proc.kill('SIGCONT');
}

export async function publishHttp(hub, channel, data) {
  const response = await fetch(`${hub.base}/api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  const body = await response.text();
  assert.equal(response.status, 200, body);
  return JSON.parse(body).offset;
}

/** The data of every message `hub` holds in `channel`'s history. */
export async function historyData(hub, channel) {
  const body = await (await fetch(`${hub.base}/api/history/${channel}`)).json();
  return body.messages.map((m) => m.data);
}

/** The value of a Prometheus sample line `name{labels} value` on the hub, or null. */
export async function metric(hub, sample) {
  const text = await (await fetch(`${hub.base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${sample} `));
  return line === undefined ? null : Number(line.slice(sample.length + 1));
}

export function uniquePrefix(test) {
  return `js-${test}-${process.pid}-${Date.now()}`;
}
