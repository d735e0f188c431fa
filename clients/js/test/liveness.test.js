// The application-level liveness check: a node frozen with SIGSTOP keeps its sockets open
// and answers nothing, which is what a dead link looks like to a browser. Real hubs over a
// shared Redis; the client must notice within pingInterval + pongTimeout and resume with no
// message lost or repeated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { TetherClient, State } from '../tether.js';
import { REDIS, eventually, freeze, metric, publishHttp, sleep, startHub, thaw, uniquePrefix } from './hubs.js';

const LIVENESS = { pingInterval: 500, pongTimeout: 1_000, connectTimeout: 1_000 };
/** pingInterval + pongTimeout, plus room for a loaded machine's timers. */
const NOTICE_WITHIN = LIVENESS.pingInterval + LIVENESS.pongTimeout + 3_000;

async function redisHubs(label, n) {
  const args = ['--broker', REDIS, '--redis-prefix', uniquePrefix(label)];
  const hubs = [];
  for (let i = 0; i < n; i++) hubs.push(await startHub(`${label}-${i}`, args));
  return hubs;
}

/** A client on `urls` recording messages, nodes and state events, subscribed to `channel`. */
async function watchedClient(urls, channel) {
  const client = new TetherClient(urls, { WebSocket, minDelay: 50, maxDelay: 500, ...LIVENESS });
  const seen = { messages: [], nodes: [], states: [] };
  client.onMessage((m) => seen.messages.push(m));
  client.on('welcome', ({ node }) => seen.nodes.push(node));
  client.on('state', (s) => seen.states.push({ ...s, at: Date.now() }));
  client.connect();
  await client.subscribe(channel);
  return { client, seen };
}

function assertOnceInOrder(seen, published) {
  assert.deepEqual(seen.messages.map((m) => m.data), [...published.keys()], 'every message once, in order');
  assert.deepEqual(seen.messages.map((m) => m.offset), published);
}

test('a frozen node is noticed within pingInterval + pongTimeout and the stream resumes on another node', async () => {
  const [a, b] = await redisHubs('js-freeze-move', 2);
  const { client, seen } = await watchedClient([a.url, b.url], 'frozen');
  const published = [];
  let frozenAt;
  try {
    for (let i = 0; i < 120; i++) {
      published.push(await publishHttp(b, 'frozen', i));
      if (i === 40) {
        await freeze(a);
        frozenAt = Date.now();
      }
      await sleep(10);
    }
    assert.ok(await eventually(() => seen.messages.length >= published.length, 15_000), `got ${seen.messages.length}`);
  } finally {
    thaw(a);
  }
  await sleep(200);
  assertOnceInOrder(seen, published);
  assert.deepEqual(seen.nodes, [a.name, b.name]);
  const lost = seen.states.find((s) => s.state === State.RECONNECTING);
  assert.deepEqual({ code: lost?.code, reason: lost?.reason }, { code: 1006, reason: 'ping timeout' }, JSON.stringify(seen.states));
  const noticedAfter = lost.at - frozenAt;
  assert.ok(noticedAfter <= NOTICE_WITHIN, `noticed ${noticedAfter} ms after the freeze`);
  client.close();
});

test('a node that thaws takes its client back: connect attempts time out meanwhile, nothing is lost', async () => {
  const [a, publisher] = await redisHubs('js-freeze-thaw', 2);
  const { client, seen } = await watchedClient([a.url], 'thaw');
  const published = [];
  try {
    for (let i = 0; i < 20; i++) published.push(await publishHttp(publisher, 'thaw', i));
    assert.ok(await eventually(() => seen.messages.length === 20), 'live before the freeze');
    await freeze(a);
    // Frozen long enough for the ping to go unanswered and a reconnect attempt to hang:
    // the kernel still completes the TCP handshake, but no `welcome` comes.
    assert.ok(await eventually(() => seen.states.some((s) => s.reason === 'connect timeout'), 15_000),
      JSON.stringify(seen.states));
    for (let i = 20; i < 40; i++) published.push(await publishHttp(publisher, 'thaw', i));
  } finally {
    thaw(a);
  }
  for (let i = 40; i < 60; i++) {
    published.push(await publishHttp(publisher, 'thaw', i));
    await sleep(10);
  }
  assert.ok(await eventually(() => seen.messages.length >= published.length, 15_000), `got ${seen.messages.length}`);
  await sleep(200);
  assertOnceInOrder(seen, published);
  assert.equal(seen.states.find((s) => s.state === State.RECONNECTING)?.reason, 'ping timeout');
  assert.deepEqual(seen.nodes, [a.name, a.name], 'back on the same node');
  assert.equal(client.state, State.OPEN);
  client.close();
});

test('a quiet healthy connection stays up: the hub answers the pings', async () => {
  const hub = await startHub('js-quiet');
  const client = new TetherClient(hub.url, { WebSocket, pingInterval: 100, pongTimeout: 500 });
  const states = [];
  client.on('state', (s) => states.push(s.state));
  client.connect();
  await client.subscribe('quiet');
  await sleep(2_000);
  assert.deepEqual(states, [State.CONNECTING, State.OPEN], 'never dropped');
  // Some 20 pings went out; each was a known frame (an unknown one would be answered with
  // an `unknown_type` error, which also proves the link alive, but is not what we ask for).
  assert.equal((await metric(hub, 'tether_hub_client_errors_total{code="unknown_type"}')) ?? 0, 0);
  assert.equal((await metric(hub, 'tether_hub_disconnects_total{reason="flood"}')) ?? 0, 0);
  client.close();
});
