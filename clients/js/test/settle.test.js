// Every promise the client hands out settles: subscribes left by unsubscribe() or close(),
// publishes queued, in flight or unanswered. Against real `tether hub` processes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { TetherClient, State } from '../tether.js';
import { eventually, freeze, historyData, publishHttp, sleep, startHub, thaw, within } from './hubs.js';

const code = (expected) => (error) => {
  assert.equal(error.code, expected, error.stack);
  return true;
};

test('unsubscribe() rejects the subscribes still waiting, before connect and on a live connection', async () => {
  const hub = await startHub('js-unsub');
  const client = new TetherClient(hub.url, { WebSocket });
  const received = [];
  client.onMessage((m) => received.push(m));

  // Not connected yet: the subscribe would wait for connect(); unsubscribe ends the wait.
  const early = client.subscribe('early');
  client.unsubscribe('early');
  await within(assert.rejects(early, code('unsubscribed')), 2_000, 'subscribe before connect');

  client.connect();
  assert.ok(await eventually(() => client.state === State.OPEN), 'connected');
  // Sent, not answered yet: the hub will answer `subscribed`, then `unsubscribed`.
  const left = client.subscribe('left');
  client.unsubscribe('left');
  await within(assert.rejects(left, code('unsubscribed')), 2_000, 'subscribe on a live connection');

  // Left and joined again before the hub answered either: the first answer belongs to the
  // subscription that was left and must neither resolve the new one early nor leak messages.
  const first = client.subscribe('again');
  client.unsubscribe('again');
  const second = client.subscribe('again');
  await within(assert.rejects(first, code('unsubscribed')), 2_000, 'the subscription left');
  const answer = await within(second, 5_000, 'the subscription joined again');
  assert.equal(answer.channel, 'again');

  const offset = await publishHttp(hub, 'again', 'once');
  await publishHttp(hub, 'left', 'not wanted');
  assert.ok(await eventually(() => received.length >= 1), 'the channel joined again is live');
  await sleep(300);
  assert.deepEqual(received, [{ channel: 'again', offset, data: 'once' }], 'once, and nothing of the channel left');
  client.close();
});

test('close() rejects the subscribes and publishes still waiting, sent or not', async () => {
  const hub = await startHub('js-close');
  const never = new TetherClient(hub.url, { WebSocket });
  const subscribe = never.subscribe('c');
  const queued = never.publish('c', 'never sent');
  never.close();
  await within(assert.rejects(subscribe, code('closed')), 2_000, 'subscribe before connect');
  await within(assert.rejects(queued, (e) => code('closed')(e) && e.sent === false), 2_000, 'queued publish');

  const client = new TetherClient(hub.url, { WebSocket, pingInterval: null, publishTimeout: null });
  client.connect();
  await client.subscribe('c');
  // A frozen hub reads nothing: the publish goes out and is never answered.
  await freeze(hub);
  try {
    const inFlight = client.publish('c', 'unanswered');
    await sleep(100);
    client.close();
    await within(assert.rejects(inFlight, (e) => code('closed')(e) && e.sent === true), 2_000, 'publish in flight');
  } finally {
    thaw(hub);
  }
  // Sent before close(): the hub carries it out when it wakes.
  assert.ok(await eventually(async () => (await historyData(hub, 'c')).length === 1), 'published after the thaw');
  assert.deepEqual(await historyData(hub, 'c'), ['unanswered']);
});

test('a publish the hub does not answer in time rejects with timeout, and its late answer is ignored', async () => {
  const hub = await startHub('js-pub-timeout');
  const client = new TetherClient(hub.url, { WebSocket, publishTimeout: 300, pingInterval: null });
  const received = [];
  client.onMessage((m) => received.push(m.data));
  client.connect();
  await client.subscribe('t');
  await freeze(hub);
  let late;
  try {
    const started = Date.now();
    late = client.publish('t', 'late');
    await within(assert.rejects(late, (e) => code('timeout')(e) && e.sent === true), 5_000, 'publish to a frozen hub');
    const waited = Date.now() - started;
    assert.ok(waited >= 290, `rejected after ${waited} ms, before the timeout`);
  } finally {
    thaw(hub);
  }
  // The hub wakes, publishes 'late' and answers it: that answer finds nobody waiting.
  const offset = await within(client.publish('t', 'next'), 5_000, 'publish after the thaw');
  assert.ok(await eventually(() => received.length === 2), `got ${JSON.stringify(received)}`);
  assert.deepEqual(received, ['late', 'next'], 'the timed-out publish may still be published (at most once)');
  assert.equal(client.lastOffset('t'), offset);
  assert.equal(client.state, State.OPEN, 'a late answer does not disturb the connection');
  client.close();
});

test('a publish queued while disconnected times out unsent and is never sent afterwards', async () => {
  const hub = await startHub('js-queued-timeout');
  const client = new TetherClient(hub.url, { WebSocket, publishTimeout: 200 });
  const queued = client.publish('q', 'stale');
  await within(assert.rejects(queued, (e) => code('timeout')(e) && e.sent === false), 2_000, 'queued publish');
  client.connect();
  await client.subscribe('q');
  await within(client.publish('q', 'fresh'), 5_000, 'publish once connected');
  assert.deepEqual(await historyData(hub, 'q'), ['fresh']);
  client.close();
});
