// Type declarations for tether.js, the tether hub client. Kept by hand beside the module
// (which has no build step); test/types.check.ts exercises them with `tsc --noEmit`.

/** Connection states, in the order a connection normally goes through them. */
export declare const State: Readonly<{
  CONNECTING: 'connecting';
  OPEN: 'open';
  RECONNECTING: 'reconnecting';
  CLOSED: 'closed';
}>;
export type State = (typeof State)[keyof typeof State];

/** What the client does after a connection ends, by close code (see `reactionTo`). */
export declare const Reaction: Readonly<{
  RESUME_NOW: 'resume-now';
  BACK_OFF: 'back-off';
  RETRY: 'retry';
  NEW_TOKEN: 'new-token';
  REFUSED: 'refused';
}>;
export type Reaction = (typeof Reaction)[keyof typeof Reaction];

/** The reaction to WebSocket close `code`. */
export declare function reactionTo(code: number | undefined): Reaction;

/** Full-jitter exponential backoff: a uniform delay below min(maxDelay, minDelay × 2^attempt). */
export declare function backoffDelay(
  attempt: number,
  options?: { minDelay?: number; maxDelay?: number },
  random?: () => number,
): number;

/** The `exp` of a JWT in epoch ms, read without verifying it; null if it has none. */
export declare function tokenExpiry(token: string): number | null;

/** Error codes the hub sends in `error` frames. */
export type HubErrorCode =
  | 'bad_json'
  | 'bad_frame'
  | 'unknown_type'
  | 'too_large'
  | 'bad_channel'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'too_many_subscriptions'
  | 'too_deep'
  | 'broker_unavailable'
  | 'unauthorized'
  | 'forbidden'
  | 'token_expired';

/** Error codes the client itself gives. */
export type ClientErrorCode =
  /** `close()` was called (or the client stopped) before the answer. */
  | 'closed'
  /** `unsubscribe()` came before the hub's `subscribed`. */
  | 'unsubscribed'
  /** The connection dropped after a publish was sent, before its answer. */
  | 'disconnected'
  /** No answer within `publishTimeout`. */
  | 'timeout'
  /** The WebSocket constructor threw. */
  | 'connect_failed'
  /** `getToken` or `getSubscriptionToken` threw, gave no string, or did not answer in time. */
  | 'token_failed';

export type ErrorCode = HubErrorCode | ClientErrorCode;

/** What every promise of the client rejects with. */
export interface TetherError extends Error {
  code: ErrorCode | (string & {});
  /** Publishes only: whether the frame had gone out (then it may or may not have been published). */
  sent?: boolean;
}

/** Why `getToken` is called. */
export type TokenReason =
  /** Opening a connection, with no fresh token held. */
  | 'connect'
  /** `refreshMargin` before the held token's `exp`; sent in a `refresh` frame. */
  | 'refresh'
  /** After a 4001 close: the token expired. */
  | 'expired'
  /** After a 4003 close: the token was refused. A second refusal stops the client. */
  | 'refused';

export interface TetherOptions {
  /** Constructor to use (Node 20 has none built in: pass the `ws` package's). */
  WebSocket?: unknown;
  /** First backoff ceiling, ms (250). */
  minDelay?: number;
  /** Largest backoff ceiling, ms (10000). */
  maxDelay?: number;
  /** ms before retrying a subscribe refused with `broker_unavailable` (1000). */
  resubscribeDelay?: number;
  /** Ceiling of the random delay before reconnecting after 1001, 1012 or 4001, ms (1000). */
  restartJitter?: number;
  /** ms of silence after which the client sends `ping` (20000); null: no liveness check. */
  pingInterval?: number | null;
  /** ms to wait for any frame after a `ping` before dropping the link (10000). */
  pongTimeout?: number;
  /** ms from starting an attempt (token fetch included) to `welcome` (10000). */
  connectTimeout?: number;
  /** ms a publish may wait for its answer (10000); null: forever. */
  publishTimeout?: number | null;
  /** A fixed connection token (JWT); it cannot be renewed: 4001 or 4003 stop the client. */
  token?: string;
  /** Fetches a connection token (at connect, before expiry, after 4001, once after 4003). */
  getToken?: (context: { reason: TokenReason }) => string | Promise<string>;
  /** ms before the token's `exp` at which `refresh` is sent (30000); shorter tokens refresh halfway. */
  refreshMargin?: number;
  /** Subscription token for a channel, asked at every subscribe unless `subscribe(c, {token})` gave one. */
  getSubscriptionToken?: (channel: string) => string | Promise<string>;
  /** Source of [0, 1) numbers for the jitter. */
  random?: () => number;
}

export interface SubscribeOptions {
  /** Replay what came after this offset first. */
  since?: number;
  /** A subscription token (a JWT with a `channel` claim) for this channel. */
  token?: string;
}

/** The hub's `subscribed` answer. */
export interface Subscribed {
  channel: string;
  offset: number;
  recovered: boolean;
}

export interface Message<T = unknown> {
  channel: string;
  offset: number;
  data: T;
}

export interface StateEvent {
  state: State;
  node: string | null;
  attempt?: number;
  delay?: number;
  /** Close code of the connection that ended (4001, 4003, 1012…), when one did. */
  code?: number;
  reason?: string;
}

export interface WelcomeEvent {
  node: string;
  /** The token's `sub`, on a hub that checks tokens. */
  user: string | null;
}

export interface GapEvent {
  channel: string;
  since: number;
  offset: number;
}

/** A hub `error` frame, or one of the client's own (`fatal` when the client stopped). */
export interface ErrorEvent {
  code: ErrorCode | (string & {});
  message?: string;
  channel?: string;
  id?: unknown;
  /** Set when the client stopped for good because of it (4003 refused again, 4001 without getToken). */
  fatal?: boolean;
  /** With `fatal`: the close code that stopped it (4001 or 4003). */
  close?: number;
}

export interface TetherEvents {
  state: StateEvent;
  welcome: WelcomeEvent;
  subscribed: Subscribed;
  message: Message;
  gap: GapEvent;
  error: ErrorEvent;
}

export declare class TetherClient {
  constructor(url: string | string[] | (() => string), options?: TetherOptions);
  readonly state: State;
  readonly node: string | null;
  readonly user: string | null;
  lastOffset(channel: string): number | null;
  connect(): this;
  close(): void;
  reconnect(): this;
  subscribe(channel: string, options?: SubscribeOptions): Promise<Subscribed>;
  unsubscribe(channel: string): void;
  publish(channel: string, data: unknown): Promise<number>;
  onMessage(handler: (message: Message) => void): () => void;
  on<E extends keyof TetherEvents>(event: E, handler: (payload: TetherEvents[E]) => void): () => void;
}
