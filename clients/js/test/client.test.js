// The JS client against real `tether hub` processes (binary from $TETHER_BIN).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { TetherClient, State, backoffDelay } from '../tether.js';
import { REDIS, eventually, metric, publishHttp, startHub, uniquePrefix } from './hubs.js';

test('full-jitter backoff stays below min(max, base * 2^attempt)', () => {
  assert.equal(backoffDelay(0, { minDelay: 100, maxDelay: 1000 }, () => 0.999), 99);
  assert.equal(backoffDelay(3, { minDelay: 100, maxDelay: 1000 }, () => 0.5), 400);
  assert.equal(backoffDelay(20, { minDelay: 100, maxDelay: 1000 }, () => 0.999), 999);
  assert.equal(backoffDelay(5, {}, () => 0), 0);
});

test('connects, names its node, and delivers its own publish once', async () => {
  const hub = await startHub('js-solo');
  const client = new TetherClient(hub.url, { WebSocket });
  const states = [];
  client.on('state', ({ state }) => states.push(state));
  const messages = [];
  client.onMessage((m) => messages.push(m));
  const subscribed = client.subscribe('js:room');
  client.connect();
  await subscribed;
  assert.equal(client.state, State.OPEN);
  assert.equal(client.node, 'js-solo');
  const offset = await client.publish('js:room', { text: 'hi' });
  assert.ok(await eventually(() => messages.length === 1));
  assert.deepEqual(messages, [{ channel: 'js:room', offset, data: { text: 'hi' } }]);
  assert.equal(client.lastOffset('js:room'), offset);
  await assert.rejects(client.subscribe('bad channel'), (e) => e.code === 'bad_channel');
  client.close();
  assert.deepEqual(states, [State.CONNECTING, State.OPEN, State.CLOSED]);
  hub.proc.kill('SIGKILL');
});

test('emits gap when the hub history no longer reaches the given offset', async () => {
  const hub = await startHub('js-gap', ['--history-size', '2']);
  for (let i = 0; i < 5; i++) await publishHttp(hub, 'g', i);
  const client = new TetherClient(hub.url, { WebSocket });
  const gaps = [];
  client.on('gap', (g) => gaps.push(g));
  const received = [];
  client.onMessage((m) => received.push(m.data));
  client.connect();
  const subscribed = await client.subscribe('g', { since: 1 });
  assert.equal(subscribed.recovered, false);
  assert.equal(gaps.length, 1);
  assert.ok(await eventually(() => received.length === 2));
  assert.deepEqual(received, [3, 4]);
  client.close();
  hub.proc.kill('SIGKILL');
});

/** Runs a client on [a, b], publishes 0..n-1 through b, and calls `disrupt(a)` midway. */
async function resumeAcross(label, extraArgs, disrupt) {
  const prefix = uniquePrefix(label);
  const args = ['--broker', REDIS, '--redis-prefix', prefix, ...extraArgs];
  const a = await startHub(`${label}-a`, args);
  const b = await startHub(`${label}-b`, args);
  const client = new TetherClient([a.url, b.url], { WebSocket, minDelay: 50, maxDelay: 500 });
  const nodes = [];
  client.on('welcome', ({ node }) => nodes.push(node));
  const received = [];
  client.onMessage((m) => received.push(m));
  client.connect();
  await client.subscribe('resume');
  const published = [];
  for (let i = 0; i < 120; i++) {
    published.push(await publishHttp(b, 'resume', i));
    if (i === 40) await disrupt(a);
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(await eventually(() => received.length >= published.length, 15_000), `got ${received.length}`);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(received.map((m) => m.data), [...published.keys()]);
  assert.deepEqual(received.map((m) => m.offset), published);
  assert.deepEqual(nodes, [`${label}-a`, `${label}-b`]);
  client.close();
  a.proc.kill('SIGKILL');
  b.proc.kill('SIGKILL');
}

test('resumes on another node after its node is killed, every message once and in order', async () => {
  await resumeAcross('js-kill', [], async (a) => {
    a.proc.kill('SIGKILL');
    await a.exited;
  });
});

test('moves to another node on graceful shutdown (1012) with no message lost', async () => {
  await resumeAcross('js-term', ['--shutdown-window', '300ms'], async (a) => {
    a.proc.kill('SIGTERM');
  });
});

test('reconnect() drops the socket like a cut network and the stream continues with no gap and no duplicate', async () => {
  const hub = await startHub('js-reconnect');
  // A backoff of ~300 ms, so messages published meanwhile must come back through `since`.
  const client = new TetherClient(hub.url, { WebSocket, minDelay: 300, random: () => 0.99 });
  const states = [];
  client.on('state', (s) => states.push(s));
  const subscribed = [];
  client.on('subscribed', (s) => subscribed.push(s));
  let welcomes = 0;
  client.on('welcome', () => { welcomes += 1; });
  const received = [];
  client.onMessage((m) => received.push(m));
  client.connect();
  await client.subscribe('flow');
  const published = [];
  for (let i = 0; i < 80; i++) {
    published.push(await publishHttp(hub, 'flow', i));
    if (i === 20) {
      assert.ok(await eventually(() => received.length === 21), 'live before the cut');
      client.reconnect();
      assert.equal(client.state, State.RECONNECTING);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.ok(await eventually(() => received.length >= published.length), `got ${received.length}`);
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(received.map((m) => m.data), [...published.keys()], 'every message once, in order');
  assert.deepEqual(received.map((m) => m.offset), published);
  assert.equal(welcomes, 2, 'it connected again');
  const dropped = states.find((s) => s.state === State.RECONNECTING);
  assert.equal(dropped?.code, 1006, JSON.stringify(states));
  assert.equal(dropped?.reason, 'reconnect()');
  assert.equal(subscribed.length, 2);
  assert.equal(subscribed[1].recovered, true);
  assert.ok(subscribed[1].offset > published[21], 'messages were published while it was away');
  assert.equal(await metric(hub, 'tether_hub_resumes_total{outcome="recovered"}'), 1, 'it resumed with since');
  assert.ok(await eventually(async () => (await metric(hub, 'tether_hub_connections')) === 1),
    'the hub saw the dropped socket go at once');
  client.close();
  const { state, code, reason } = states.at(-1);
  assert.deepEqual({ state, code, reason }, { state: State.CLOSED, code: 1000, reason: 'client closed' });
  hub.proc.kill('SIGKILL');
});

test('the state event carries the close code and reason the hub sent', async () => {
  const hub = await startHub('js-close-code', ['--shutdown-window', '100ms']);
  const client = new TetherClient(hub.url, { WebSocket, minDelay: 50, maxDelay: 100 });
  const states = [];
  client.on('state', (s) => states.push(s));
  client.connect();
  assert.ok(await eventually(() => client.state === State.OPEN), 'connected');
  hub.proc.kill('SIGTERM');
  assert.ok(await eventually(() => states.some((s) => s.state === State.RECONNECTING)), 'dropped');
  const closed = states.find((s) => s.state === State.RECONNECTING);
  assert.equal(closed.code, 1012, JSON.stringify(closed));
  assert.equal(closed.reason, 'node shutting down');
  client.close();
  hub.proc.kill('SIGKILL');
});
