// What the client does with each close code: 1012/1001 come back at once (jittered) and
// resume; 1013/1008 back off, further each time. 1012, 1013 and 1008 come from real hubs
// (drain, slow consumer, flood). No tether process sends 1001 or 4000-range codes other than
// 4001/4003 (those are in auth.test.js, from real hubs), so they come from a real `ws`
// server on loopback that speaks just enough of the protocol to close with them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket, { WebSocketServer } from 'ws';

import { Reaction, State, TetherClient, reactionTo } from '../tether.js';
import { REDIS, eventually, publishHttp, sleep, startHub, uniquePrefix } from './hubs.js';

/** Jitter source pinned near 1, so each delay sits at the top of its range. */
const HIGH = () => 0.99;

test('close codes map to reactions: resume now, back off, or the usual retry', () => {
  assert.equal(reactionTo(1012), Reaction.RESUME_NOW);
  assert.equal(reactionTo(1001), Reaction.RESUME_NOW);
  assert.equal(reactionTo(1013), Reaction.BACK_OFF);
  assert.equal(reactionTo(1008), Reaction.BACK_OFF);
  // 4001 and 4003 have their own reactions (auth.test.js); the rest of the range backs off.
  for (const auth of [4000, 4002, 4999]) assert.equal(reactionTo(auth), Reaction.BACK_OFF);
  for (const other of [1000, 1006, 1009, 1011, 3000, 5000, undefined]) assert.equal(reactionTo(other), Reaction.RETRY);
});

function recordStates(client) {
  const states = [];
  client.on('state', (s) => states.push(s));
  return states;
}

const reconnecting = (states) => states.filter((s) => s.state === State.RECONNECTING);

test('1012 from a draining hub: back on another node within restartJitter, resumed, not after a backoff', async () => {
  const args = ['--broker', REDIS, '--redis-prefix', uniquePrefix('js-1012'), '--shutdown-window', '100ms'];
  const a = await startHub('js-1012-a', args);
  const b = await startHub('js-1012-b', args);
  // A backoff would wait ~5 s here; a restart must not.
  const client = new TetherClient([a.url, b.url], { WebSocket, minDelay: 5_000, restartJitter: 200, random: HIGH });
  const states = recordStates(client);
  const received = [];
  client.onMessage((m) => received.push(m.data));
  client.connect();
  await client.subscribe('drain');
  await publishHttp(b, 'drain', 'before');
  assert.ok(await eventually(() => received.length === 1));
  a.proc.kill('SIGTERM');
  await a.exited;
  await publishHttp(b, 'drain', 'while away');
  assert.ok(await eventually(() => client.node === b.name, 3_000), JSON.stringify(states));
  const [closed] = reconnecting(states);
  assert.equal(closed.code, 1012);
  assert.equal(closed.delay, 198, 'a jitter below restartJitter, not a backoff');
  assert.ok(await eventually(() => received.length === 2));
  assert.deepEqual(received, ['before', 'while away']);
  client.close();
  b.proc.kill('SIGKILL');
});

test('1013 from a hub whose client fell behind: the reconnect backs off beyond a plain retry', async () => {
  // A 2-message queue and a 500 ms rest between writes: a burst overflows it.
  const hub = await startHub('js-1013', ['--client-queue', '2', '--write-delay', '500ms']);
  const client = new TetherClient(hub.url, { WebSocket, minDelay: 100, maxDelay: 10_000, random: HIGH });
  const states = recordStates(client);
  const received = [];
  client.onMessage((m) => received.push(m.data));
  client.connect();
  await client.subscribe('burst');
  const published = [];
  for (let i = 0; i < 10; i++) published.push(await publishHttp(hub, 'burst', i));
  assert.ok(await eventually(() => reconnecting(states).length >= 1), JSON.stringify(states));
  const [closed] = reconnecting(states);
  assert.equal(closed.code, 1013, JSON.stringify(closed));
  // A plain retry right after a welcome would wait below minDelay (99 ms here).
  assert.equal(closed.delay, Math.floor(0.99 * 100 * 4), 'backed off two steps');
  // It resumes from the last offset it had: every message once, in order.
  assert.ok(await eventually(() => received.length >= published.length, 10_000), `got ${received.length}`);
  await sleep(200);
  assert.deepEqual(received, [...published.keys()]);
  client.close();
  hub.proc.kill('SIGKILL');
});

test('1008 from a hub flooded by its client: each consecutive one backs off further', async () => {
  const hub = await startHub('js-1008', ['--client-rate', '5', '--client-burst', '5']);
  const client = new TetherClient(hub.url, { WebSocket, minDelay: 100, maxDelay: 10_000, random: HIGH });
  const states = recordStates(client);
  const welcomes = [];
  client.on('welcome', () => welcomes.push(Date.now()));
  client.connect();
  for (let round = 1; round <= 2; round++) {
    assert.ok(await eventually(() => welcomes.length === round), `connected ${round}`);
    const flood = Array.from({ length: 20 }, (_, i) => client.publish('flood', i).catch((e) => e.code));
    assert.ok(await eventually(() => reconnecting(states).length === round), JSON.stringify(states));
    const outcomes = await Promise.all(flood);
    assert.ok(outcomes.includes('disconnected'), 'publishes in flight were told');
  }
  const [first, second] = reconnecting(states);
  assert.deepEqual([first.code, second.code], [1008, 1008], JSON.stringify(states));
  assert.equal(first.delay, Math.floor(0.99 * 100 * 4));
  assert.equal(second.delay, Math.floor(0.99 * 100 * 8), 'a second 1008 soon after backs off further');
  client.close();
  hub.proc.kill('SIGKILL');
});

/**
 * A real WebSocket server that greets like a hub (`welcome`, `subscribed`) and closes each
 * connection with the next of `codes` once the client has subscribed.
 */
async function closingServer(codes) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => server.on('listening', r));
  let n = 0;
  server.on('connection', (socket) => {
    const code = codes[Math.min(n, codes.length - 1)];
    n += 1;
    socket.send(JSON.stringify({ type: 'welcome', node: `scripted-${n}` }));
    socket.on('message', (text) => {
      const frame = JSON.parse(String(text));
      if (frame.type !== 'subscribe') return;
      socket.send(JSON.stringify({ type: 'subscribed', channel: frame.channel, offset: 7, recovered: true }));
      socket.close(code, `scripted ${code}`);
    });
  });
  return { url: `ws://127.0.0.1:${server.address().port}/ws`, close: () => server.close() };
}

test('1001 comes back at once like 1012; a 4000-range close other than 4001/4003 backs off', async () => {
  const server = await closingServer([1001, 4000, 1000]);
  const client = new TetherClient(server.url, { WebSocket, minDelay: 100, restartJitter: 50, random: HIGH });
  const states = recordStates(client);
  const subscribes = [];
  client.on('subscribed', (s) => subscribes.push(s));
  client.connect();
  client.subscribe('c');
  assert.ok(await eventually(() => reconnecting(states).length >= 3, 10_000), JSON.stringify(states));
  const [goingAway, auth, normal] = reconnecting(states);
  assert.deepEqual([goingAway.code, goingAway.delay], [1001, Math.floor(0.99 * 50)]);
  assert.deepEqual([auth.code, auth.delay], [4000, Math.floor(0.99 * 100 * 4)]);
  assert.deepEqual([normal.code, normal.delay], [1000, Math.floor(0.99 * 100)]);
  client.close();
  server.close();
});
