// Token authentication against real hubs started with `--token-hmac-secret`: the tokens are
// HS256 JWTs signed here with node's crypto, so the hub checks real signatures and expiries
// (its leeway is 5 s: expiry tests wait for exp + 5 s).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';

import { Reaction, State, TetherClient, reactionTo, tokenExpiry } from '../tether.js';
import { eventually, publishHttp, startHub, within } from './hubs.js';

const SECRET = 'js-auth-test-secret-0123456789abcdef';
const LEEWAY_MS = 5_000;

function base64url(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** An HS256 JWT for `sub`, valid for `lifeMs`, with `claims` added. */
function sign(sub, lifeMs, claims = {}, secret = SECRET) {
  const head = base64url({ alg: 'HS256', typ: 'JWT' });
  const body = base64url({ sub, exp: Math.floor((Date.now() + lifeMs) / 1000), ...claims });
  const mac = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${mac}`;
}

const authHub = (name) => startHub(name, ['--token-hmac-secret', SECRET]);

function record(client, event) {
  const seen = [];
  client.on(event, (e) => seen.push(e));
  return seen;
}

test('4001 and 4003 have their own reactions', () => {
  assert.equal(reactionTo(4001), Reaction.NEW_TOKEN);
  assert.equal(reactionTo(4003), Reaction.REFUSED);
});

test('tokenExpiry reads exp from the payload without verifying', () => {
  const token = sign('alice', 60_000, {}, 'another-secret-another-secret-0000');
  assert.ok(Math.abs(tokenExpiry(token) - (Date.now() + 60_000)) < 2_000);
  assert.equal(tokenExpiry('not-a-jwt'), null);
  assert.equal(tokenExpiry(`${base64url({})}.${base64url({ sub: 'x' })}.sig`), null);
});

test('a static token connects: welcome names the user, token channels subscribe', async () => {
  const hub = await authHub('js-auth-static');
  const client = new TetherClient(hub.url, { WebSocket, token: sign('alice', 600_000, { channels: ['room:*'] }) });
  const received = [];
  client.onMessage((m) => received.push(m.data));
  client.connect();
  await within(client.subscribe('room:lobby'), 10_000, 'subscribe');
  assert.equal(client.user, 'alice');
  await publishHttp(hub, 'room:lobby', 'hello');
  assert.ok(await eventually(() => received.length === 1));
  client.close();
  hub.proc.kill('SIGKILL');
});

test('a forbidden subscribe rejects with forbidden; the connection stays open', async () => {
  const hub = await authHub('js-auth-forbidden');
  const client = new TetherClient(hub.url, { WebSocket, token: sign('alice', 600_000, { channels: ['room:*'] }) });
  client.connect();
  await assert.rejects(within(client.subscribe('secret:1'), 10_000, 'subscribe'), { code: 'forbidden' });
  await within(client.subscribe('room:ok'), 10_000, 'subscribe after forbidden');
  // Publishing needs `publish` patterns: none in this token.
  await assert.rejects(within(client.publish('room:ok', 1), 10_000, 'publish'), { code: 'forbidden', sent: true });
  assert.equal(client.state, State.OPEN);
  client.close();
  hub.proc.kill('SIGKILL');
});

test('a subscription token opens its one channel and no other', async () => {
  const hub = await authHub('js-auth-subtoken');
  const asked = [];
  const client = new TetherClient(hub.url, {
    WebSocket,
    token: sign('alice', 600_000),
    getSubscriptionToken: (channel) => {
      asked.push(channel);
      return sign('alice', 600_000, { channel: 'secret:7' });
    },
  });
  const received = [];
  client.onMessage((m) => received.push(m));
  client.connect();
  await within(client.subscribe('secret:7'), 10_000, 'subscribe with a subscription token');
  await assert.rejects(within(client.subscribe('secret:8'), 10_000, 'subscribe another'), (e) => ['forbidden', 'unauthorized'].includes(e.code));
  // The explicit token of subscribe() wins over getSubscriptionToken.
  await within(client.subscribe('secret:9', { token: sign('alice', 600_000, { channel: 'secret:9' }) }), 10_000, 'explicit token');
  assert.deepEqual(asked, ['secret:7', 'secret:8']);
  await publishHttp(hub, 'secret:7', 'for alice');
  assert.ok(await eventually(() => received.length === 1));
  assert.equal(received[0].channel, 'secret:7');
  client.close();
  hub.proc.kill('SIGKILL');
});

test('refresh before expiry keeps the connection open past the first token\'s end', async () => {
  const hub = await authHub('js-auth-refresh');
  const reasons = [];
  const client = new TetherClient(hub.url, {
    WebSocket,
    refreshMargin: 1_000,
    getToken: ({ reason }) => {
      reasons.push(reason);
      return sign('alice', 3_000, { channels: ['*'] });
    },
  });
  const states = record(client, 'state');
  client.connect();
  await within(client.subscribe('room:r'), 10_000, 'subscribe');
  const firstExpiry = Date.now() + 3_000 + LEEWAY_MS;
  // Past the first token's end (leeway included) the hub would have closed with 4001.
  assert.ok(await eventually(() => Date.now() > firstExpiry + 1_500, 20_000));
  assert.equal(client.state, State.OPEN, JSON.stringify(states));
  assert.deepEqual(states.filter((s) => s.state === State.RECONNECTING), []);
  assert.equal(reasons[0], 'connect');
  assert.ok(reasons.filter((r) => r === 'refresh').length >= 2, JSON.stringify(reasons));
  client.close();
  hub.proc.kill('SIGKILL');
});

test('expiry without refresh: 4001, getToken, reconnect and resume with no loss', async () => {
  const hub = await authHub('js-auth-expire');
  const reasons = [];
  const client = new TetherClient(hub.url, {
    WebSocket,
    restartJitter: 0,
    getToken: ({ reason }) => {
      reasons.push(reason);
      // The token service is down whenever the client tries to refresh.
      if (reason === 'refresh') throw new Error('token service unavailable');
      return sign('alice', reason === 'connect' ? 1_000 : 600_000, { channels: ['*'] });
    },
  });
  const states = record(client, 'state');
  const received = [];
  client.onMessage((m) => received.push(m.data));
  client.connect();
  await within(client.subscribe('room:e'), 10_000, 'subscribe');
  await publishHttp(hub, 'room:e', 'before');
  // The reconnect may be over before a poll sees it: look for it among the state events.
  assert.ok(await eventually(() => states.some((s) => s.state === State.RECONNECTING), 15_000), JSON.stringify(states));
  const closed = states.find((s) => s.state === State.RECONNECTING);
  assert.equal(closed.code, 4001, JSON.stringify(closed));
  await publishHttp(hub, 'room:e', 'while away');
  assert.ok(await eventually(() => client.state === State.OPEN, 10_000), JSON.stringify(states));
  await publishHttp(hub, 'room:e', 'after');
  assert.ok(await eventually(() => received.length === 3), JSON.stringify(received));
  assert.deepEqual(received, ['before', 'while away', 'after']);
  assert.ok(reasons.includes('expired'), JSON.stringify(reasons));
  client.close();
  hub.proc.kill('SIGKILL');
});

test('4003 stops: one more token from getToken, refused too, then closed with an error', async () => {
  const hub = await authHub('js-auth-refused');
  const reasons = [];
  const client = new TetherClient(hub.url, {
    WebSocket,
    minDelay: 50,
    getToken: ({ reason }) => {
      reasons.push(reason);
      return sign('mallory', 600_000, {}, 'a-secret-the-hub-does-not-know-0000');
    },
  });
  const states = record(client, 'state');
  const errors = record(client, 'error');
  client.connect();
  const subscribed = client.subscribe('room:x');
  await assert.rejects(within(subscribed, 15_000, 'subscribe'), { code: 'unauthorized' });
  assert.equal(client.state, State.CLOSED);
  assert.deepEqual(reasons, ['connect', 'refused']);
  const last = states.at(-1);
  assert.deepEqual([last.state, last.code], [State.CLOSED, 4003]);
  assert.ok(errors.some((e) => e.fatal && e.code === 'unauthorized'), JSON.stringify(errors));
  client.close();
  hub.proc.kill('SIGKILL');
});

test('4003 with a static token stops at once', async () => {
  const hub = await authHub('js-auth-refused-static');
  const client = new TetherClient(hub.url, { WebSocket, token: sign('mallory', 600_000, {}, 'a-secret-the-hub-does-not-know-0000') });
  const states = record(client, 'state');
  client.connect();
  assert.ok(await eventually(() => client.state === State.CLOSED, 10_000), JSON.stringify(states));
  assert.equal(states.filter((s) => s.state === State.RECONNECTING).length, 0);
  assert.equal(states.at(-1).code, 4003);
  hub.proc.kill('SIGKILL');
});
