// Compiled with `npx -p typescript tsc --noEmit --strict --module nodenext --moduleResolution nodenext
// --target es2022 test/types.check.ts`
// (never run): checks tether.d.ts describes the client as the docs use it.
import { Reaction, State, TetherClient, reactionTo, tokenExpiry, type TetherError } from '../tether.js';

const client = new TetherClient(['wss://a/ws', 'wss://b/ws'], {
  minDelay: 100,
  pingInterval: null,
  refreshMargin: 10_000,
  getToken: async ({ reason }) => (reason === 'refresh' ? 'jwt-2' : 'jwt-1'),
  getSubscriptionToken: (channel: string) => `sub-${channel}`,
});
client.on('state', ({ state, code }) => {
  const s: State = state;
  if (s === State.CLOSED && code === 4003) console.log('refused');
});
client.on('error', (e) => e.fatal && console.log(e.code));
client.on('welcome', ({ node, user }) => console.log(node, user?.length));
client.onMessage(({ channel, offset, data }) => console.log(channel, offset + 1, data));
client.connect();
const sub: Promise<{ channel: string; offset: number; recovered: boolean }> = client.subscribe('secret:1', { token: 'jwt', since: 3 });
sub.catch((e: TetherError) => e.code === 'forbidden');
const offset: Promise<number> = client.publish('room:1', { text: 'hi' });
const r: Reaction = reactionTo(4001);
const exp: number | null = tokenExpiry('a.b.c');
console.log(offset, r, exp, client.user, client.lastOffset('room:1'));
// @ts-expect-error: a token is a string
new TetherClient('ws://x', { token: 42 });
// @ts-expect-error: no such event
client.on('nope', () => {});
