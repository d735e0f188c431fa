// tether hub client for browsers and Node >= 20. Plain ES module, no dependencies.
//
// What it promises the application: per channel, messages arrive in offset order, each
// once, across reconnects to any node. It remembers the last offset seen on each channel,
// reconnects with full-jitter exponential backoff, and resubscribes with `since` so the
// hub replays what was missed; anything at or below the last offset is dropped here too.
// When the hub says `recovered: false` (its history no longer reaches back), the client
// emits a `gap` event: the app should reload its state from its own source of truth.
//
// It also keeps every promise it hands out from hanging (timeouts, unsubscribe and close
// settle them), checks that a quiet link is still alive (a browser cannot see WebSocket
// pings), and reacts to each close code as README's close code table says.
//
// One file on purpose, though long: it is the whole package, served as is (the demo
// embeds it as /tether.js) with no build step.

/** Connection states, in the order a connection normally goes through them. */
export const State = Object.freeze({
  CONNECTING: 'connecting',
  OPEN: 'open',
  RECONNECTING: 'reconnecting',
  CLOSED: 'closed',
});

const DEFAULTS = {
  /** First reconnect delay ceiling, ms. */
  minDelay: 250,
  /** Largest reconnect delay ceiling, ms. */
  maxDelay: 10_000,
  /** How long to wait after `broker_unavailable` before subscribing again, ms. */
  resubscribeDelay: 1_000,
  /** Ceiling of the random delay before reconnecting after a 1001 or 1012 close, ms. */
  restartJitter: 1_000,
  /** Quiet time (nothing received) after which the client sends `ping`, ms; null: never. */
  pingInterval: 20_000,
  /** How long after its `ping` the client waits for any frame before dropping the link, ms. */
  pongTimeout: 10_000,
  /** How long opening a connection may take, up to the hub's `welcome`, ms. */
  connectTimeout: 10_000,
  /** How long a publish may wait for the hub's answer, queued time included, ms; null: forever. */
  publishTimeout: 10_000,
  /** How long before the connection token's `exp` the client sends `refresh`, ms. */
  refreshMargin: 30_000,
};

/** Options that must be a number of milliseconds; those also in NULLABLE may be null (off). */
const DURATIONS = Object.keys(DEFAULTS);
const NULLABLE = new Set(['pingInterval', 'publishTimeout']);

/** The soonest a token refresh is tried again after one that failed, ms. */
const MIN_REFRESH_DELAY = 1_000;

/**
 * What the client does after a connection ends, by the close code the hub (or a proxy in
 * front of it) sent. One table for both roles is in the README ("Close codes").
 */
export const Reaction = Object.freeze({
  /** The server is restarting or moving us on purpose (drain, rebalance, shutdown): come
   * back at once, after a small random delay so its clients do not arrive together. */
  RESUME_NOW: 'resume-now',
  /** The server asked us to slow down (1013 try again later, 1008 policy): back off, and
   * further each time it asks again. */
  BACK_OFF: 'back-off',
  /** Anything else (a cut link, a crash, an error): the usual full-jitter backoff. */
  RETRY: 'retry',
  /** 4001, the token expired: get a fresh one (`getToken`), reconnect at once, resume. */
  NEW_TOKEN: 'new-token',
  /** 4003, the token was refused: never again with the same token. With `getToken`, one
   * more try with a fresh token; refused again (or without `getToken`), stop. */
  REFUSED: 'refused',
});

/**
 * The reaction to close `code`.
 *
 * 4000–4999 are reserved for authentication: 4001 (token expired) and 4003 (refused) have
 * their own reactions; other codes of the range, which no hub sends today, back off like 1013.
 */
export function reactionTo(code) {
  switch (code) {
    case 1001:
    case 1012:
      return Reaction.RESUME_NOW;
    case 1008:
    case 1013:
      return Reaction.BACK_OFF;
    case 4001:
      return Reaction.NEW_TOKEN;
    case 4003:
      return Reaction.REFUSED;
    default:
      return code >= 4000 && code <= 4999 ? Reaction.BACK_OFF : Reaction.RETRY;
  }
}

/**
 * A connection to a tether hub (or to any of several, through a load balancer).
 *
 * @example
 * const client = new TetherClient('wss://example.com/ws');
 * client.onMessage(({ channel, offset, data }) => console.log(channel, offset, data));
 * client.on('state', ({ state, node }) => console.log(state, node));
 * client.subscribe('chat:lobby');
 * client.connect();
 * await client.publish('chat:lobby', { text: 'hi' });
 */
export class TetherClient {
  /**
   * @param {string | string[] | (() => string)} url hub WebSocket URL(s); with several,
   *   each reconnect tries the next one.
   * @param {object} [options]
   * @param {typeof WebSocket} [options.WebSocket] constructor to use (Node 20 has none
   *   built in: pass the `ws` package's).
   * @param {number} [options.minDelay] first backoff ceiling in ms (250).
   * @param {number} [options.maxDelay] largest backoff ceiling in ms (10000).
   * @param {number} [options.resubscribeDelay] ms before retrying a subscribe the hub
   *   could not serve (1000).
   * @param {number} [options.restartJitter] ceiling in ms of the random delay before
   *   reconnecting after a 1001 or 1012 close (1000).
   * @param {number | null} [options.pingInterval] ms without any frame from the hub after
   *   which the client sends `ping` (20000); null turns the liveness check off.
   * @param {number} [options.pongTimeout] ms to wait for any frame after a `ping` before
   *   the link counts as dead: dropped, then reconnected with resume (10000).
   * @param {number} [options.connectTimeout] ms from opening a socket to the hub's
   *   `welcome` before the attempt is dropped and retried (10000).
   * @param {number | null} [options.publishTimeout] ms a publish may wait for its answer,
   *   time queued while disconnected included (10000); null waits as long as it takes.
   * @param {string} [options.token] connection token (a JWT) sent in the `connect` frame;
   *   it cannot be renewed, so a 4001 or 4003 close stops the client.
   * @param {(context: {reason: 'connect' | 'refresh' | 'expired' | 'refused'}) => string | Promise<string>} [options.getToken]
   *   fetches a connection token: before a connection opens (the held one is reused while
   *   fresh), `refreshMargin` before its `exp`, after a 4001 close, and once after a 4003.
   * @param {number} [options.refreshMargin] ms before the token's `exp` at which the client
   *   sends `refresh` (30000); a token that lives shorter is refreshed halfway.
   * @param {(channel: string) => string | Promise<string>} [options.getSubscriptionToken]
   *   subscription token for `channel`, asked for every time it is subscribed (each
   *   reconnect too) unless `subscribe(channel, {token})` gave one.
   * @param {() => number} [options.random] source of [0, 1) numbers for the jitter.
   */
  constructor(url, options = {}) {
    this._urls = typeof url === 'function' ? url : Array.isArray(url) ? rotate(url) : () => url;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('no WebSocket constructor: pass options.WebSocket (e.g. the "ws" package on Node 20)');
    }
    this._options = { ...DEFAULTS, ...options };
    for (const name of DURATIONS) checkDuration(name, this._options[name]);
    checkAuthOptions(this._options);
    /** The connection token held: sent at the next connect while fresh. */
    this._token = this._options.token ?? null;
    /** The held token's expiry (epoch ms, from its payload or `refreshed`), or null. */
    this._tokenExp = this._token === null ? null : tokenExpiry(this._token);
    /** Set after a 4003 once a fresh token was fetched: a second 4003 stops the client. */
    this._refusedOnce = false;
    /** Pending refresh timer, and whether a `refresh` awaits its answer. */
    this._refreshTimer = null;
    this._refreshing = false;
    /** The token fetch a connection attempt waits on (an identity token), or null. */
    this._pendingOpen = null;
    /** The authenticated user (`welcome`'s `user`), or null. */
    this._user = null;
    this._random = options.random ?? Math.random;
    this._state = State.CLOSED;
    this._node = null;
    this._ws = null;
    this._attempt = 0;
    /** Consecutive connections the server closed asking us to back off (1013, 1008). */
    this._pushback = 0;
    /** When the current connection got its `welcome` (monotonic ms), or null. */
    this._openedAt = null;
    this._timer = null;
    /** Connect timeout until `welcome`, then the liveness check. */
    this._watchdog = null;
    /** When the last frame arrived, and when the unanswered `ping` went out (or null). */
    this._heardAt = 0;
    this._pingSentAt = null;
    this._stopped = true;
    /** @type {Map<string, {last: number | null, pending: Array<{resolve: Function, reject: Function}>, live: boolean}>} */
    this._channels = new Map();
    /**
     * Channels unsubscribed on this connection whose `unsubscribed` answer has not come
     * yet, with how many are outstanding: frames for them until then belong to the
     * subscription the application left, even if it subscribed again meanwhile.
     * @type {Map<string, number>}
     */
    this._leaving = new Map();
    /**
     * Publishes not yet answered, in the order they were made; those not `sent` are the
     * outbox, sent on the next `welcome`.
     * @type {Map<number, {resolve: Function, reject: Function, frame: object, sent: boolean, timer: any}>}
     */
    this._publishes = new Map();
    this._nextId = 1;
    this._listeners = new Map();
  }

  /** Current connection state: one of {@link State}. */
  get state() {
    return this._state;
  }

  /** Name of the hub node this client is connected to (from `welcome`), or null. */
  get node() {
    return this._node;
  }

  /** The user the hub authenticated this connection as (`welcome`'s `user`), or null. */
  get user() {
    return this._user;
  }

  /** The last offset delivered on `channel`, or null if none yet. */
  lastOffset(channel) {
    return this._channels.get(channel)?.last ?? null;
  }

  /** Opens the connection (and keeps it open until {@link close}). */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._open(State.CONNECTING);
    return this;
  }

  /**
   * Closes for good: no reconnect. Every promise still waiting settles: publishes and
   * subscribes not yet answered reject with `code: 'closed'` (a publish already sent may
   * or may not have been published). Channels are remembered: a later {@link connect}
   * subscribes them again, resuming from their last offsets.
   */
  close() {
    this._halt(null, {});
  }

  /**
   * Stops for good. `error` (or null: `close()`) is what waiting promises reject with;
   * `closed` joins the state event when no socket is closed here.
   */
  _halt(error, closed) {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    this._stopWatchdog();
    this._stopRefresh();
    this._pendingOpen = null;
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      closed = closeInfo(CLIENT_CLOSED.code, CLIENT_CLOSED.reason);
      try {
        ws.close(CLIENT_CLOSED.code, CLIENT_CLOSED.reason);
      } catch {
        // Closing a socket that never opened throws in some runtimes; it is gone either way.
      }
    }
    this._node = null;
    this._user = null;
    this._leaving.clear();
    for (const [id, pending] of [...this._publishes]) {
      // The message stays 'client closed' (pages such as the demo's chat match on it).
      const cause = error ?? failure('closed', 'client closed');
      this._settlePublish(id, (p) => p.reject(Object.assign(failure(cause.code, cause.message), { sent: pending.sent })));
    }
    for (const [channel, entry] of this._channels) {
      entry.live = false;
      rejectAll(entry, error ?? failure('closed', `client closed before ${channel} was subscribed`));
    }
    this._setState(State.CLOSED, closed);
  }

  /**
   * Drops the current connection as a network failure would, then reconnects the usual
   * way: full-jitter backoff, then resubscribe with `since`, so the application sees every
   * channel continue with no gap and no duplicate. No close handshake is awaited (the
   * socket is terminated where the runtime allows it), publishes in flight reject with
   * `code: 'disconnected'`, and the `state` event says `code: 1006` (abnormal closure,
   * what a cut network gives) with `reason: 'reconnect()'`. Useful when the app knows the
   * network changed, and to show or test resume. No effect before {@link connect}, after
   * {@link close}, or while already waiting to reconnect.
   */
  reconnect() {
    if (this._stopped || !this._ws) return this;
    this._drop(DROPPED);
    return this;
  }

  /**
   * Starts receiving `channel`. With `since`, the hub first replays what came after that
   * offset. Resolves with the hub's `subscribed` answer the first time it arrives (waiting
   * through reconnects, and for {@link connect} if not connected yet); rejects with the
   * hub's error code if the hub refuses (`forbidden`, `unauthorized`, `token_expired`…),
   * `code: 'unsubscribed'` if {@link unsubscribe} comes first, `code: 'closed'` on
   * {@link close}. `token` is a subscription token for `channel` (else `getSubscriptionToken`
   * is asked, if given).
   */
  subscribe(channel, { since, token } = {}) {
    let entry = this._channels.get(channel);
    if (!entry) {
      entry = { last: since ?? null, pending: [], live: false, token: token ?? null };
      this._channels.set(channel, entry);
      if (this._state === State.OPEN) this._sendSubscribe(channel);
    }
    if (entry.live) return Promise.resolve({ channel, offset: entry.last, recovered: true });
    return new Promise((resolve, reject) => entry.pending.push({ resolve, reject }));
  }

  /**
   * Stops receiving `channel` and forgets its offset. Subscribes still waiting for their
   * answer reject with `code: 'unsubscribed'`; no message of the channel is delivered after
   * this call (until it is subscribed again).
   */
  unsubscribe(channel) {
    const entry = this._channels.get(channel);
    if (!entry) return;
    this._channels.delete(channel);
    rejectAll(entry, failure('unsubscribed', `unsubscribed from ${channel} before the hub answered`));
    if (this._state === State.OPEN) {
      this._leaving.set(channel, (this._leaving.get(channel) ?? 0) + 1);
      this._send({ type: 'unsubscribe', channel });
    }
  }

  /**
   * Publishes `data` (any JSON value but null) on `channel`; resolves with its offset.
   * Queued while disconnected. Rejects with `code: 'disconnected'` if the connection drops
   * before the hub answers, and with `code: 'timeout'` if no answer came within
   * `publishTimeout` (an answer arriving later is ignored). Either way the error's `sent`
   * says whether the frame had gone out: if it had, the message may or may not have been
   * published (at most once); if not, it never will be.
   */
  publish(channel, data) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const pending = { resolve, reject, frame: { type: 'publish', channel, data, id }, sent: false, timer: null };
      this._publishes.set(id, pending);
      const limit = this._options.publishTimeout;
      if (limit !== null) {
        pending.timer = setTimeout(() => {
          const error = failure('timeout', pending.sent
            ? `the hub did not answer within ${limit} ms; the message may or may not have been published`
            : `not connected within ${limit} ms; the message was not sent`);
          this._settlePublish(id, (p) => p.reject(Object.assign(error, { sent: pending.sent })));
        }, limit);
      }
      if (this._state === State.OPEN) this._sendPublish(pending);
    });
  }

  /** Calls `handler({channel, offset, data})` for every message; returns an unsubscriber. */
  onMessage(handler) {
    return this.on('message', handler);
  }

  /**
   * Listens to an event: `message`, `state` ({state, node, attempt, delay, code, reason}:
   * `code` and `reason` tell why a connection ended when the state becomes `reconnecting`
   * or `closed`, and are absent when no connection ended), `welcome` ({node}), `subscribed`
   * ({channel, offset, recovered}), `gap` ({channel, since, offset}), `error` (the hub's
   * error frame). Returns a function that removes the listener.
   */
  on(event, handler) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(handler);
    return () => this._listeners.get(event)?.delete(handler);
  }

  _emit(event, payload) {
    for (const handler of this._listeners.get(event) ?? []) {
      try {
        handler(payload);
      } catch (error) {
        // One faulty listener must not break delivery to the others or the client.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  /** Emits `state` when it changes (or with `force`, which stays out of the payload). */
  _setState(state, { force = false, ...details } = {}) {
    if (this._state === state && !force) return;
    this._state = state;
    this._emit('state', { state, node: this._node, ...details });
  }

  _open(state, reason = 'connect') {
    this._setState(state, { attempt: this._attempt });
    this._openedAt = null;
    if (!this._tokenIsFresh() && this._options.getToken) {
      // The connect timeout covers a token source that never answers, too.
      const attempt = {};
      this._pendingOpen = attempt;
      this._watch(this._options.connectTimeout, () => {
        this._pendingOpen = null;
        this._emit('error', { code: 'token_failed', message: `getToken did not answer within ${this._options.connectTimeout} ms` });
        this._scheduleReconnect(CONNECT_TIMEOUT);
      });
      this._fetchToken(reason).then((ok) => {
        if (this._pendingOpen !== attempt || this._stopped) return;
        this._pendingOpen = null;
        if (ok) this._openSocket(this._urls());
        else {
          this._stopWatchdog();
          this._scheduleReconnect();
        }
      });
      return;
    }
    this._openSocket(this._urls());
  }

  /** Whether the held token can open a connection (or none is configured at all). */
  _tokenIsFresh() {
    if (this._token === null) return !this._options.getToken;
    return this._tokenExp === null || this._tokenExp - Date.now() > Math.min(this._options.refreshMargin, MIN_REFRESH_DELAY);
  }

  /** Asks `getToken` for a new token and holds it; false (and an `error` event) if it failed. */
  async _fetchToken(reason) {
    try {
      const token = await this._options.getToken({ reason });
      if (typeof token !== 'string' || token === '') throw new TypeError(`getToken gave ${typeof token === 'string' ? 'an empty string' : typeof token}, not a token`);
      this._token = token;
      this._tokenExp = tokenExpiry(token);
      return true;
    } catch (error) {
      this._emit('error', { code: 'token_failed', message: String(error?.message ?? error) });
      return false;
    }
  }

  /** Sends `refresh` at the margin before the held token's `exp` (if it has one). */
  _scheduleRefresh() {
    this._stopRefresh();
    if (!this._options.getToken || this._tokenExp === null) return;
    const left = this._tokenExp - Date.now();
    const delay = Math.max(MIN_REFRESH_DELAY, Math.min(MAX_TIMER, Math.max(left - this._options.refreshMargin, left / 2)));
    this._refreshTimer = setTimeout(() => {
      this._refreshTimer = null;
      this._refresh();
    }, delay);
  }

  async _refresh() {
    const ws = this._ws;
    if (!ws || this._state !== State.OPEN) return;
    const ok = await this._fetchToken('refresh');
    if (this._ws !== ws || this._state !== State.OPEN) return;
    if (!ok) {
      // Try again later; if the token runs out first, the hub closes with 4001.
      this._scheduleRefresh();
      return;
    }
    this._refreshing = true;
    this._send({ type: 'refresh', token: this._token });
  }

  _stopRefresh() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    this._refreshing = false;
  }

  _openSocket(url) {
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (error) {
      this._emit('error', { code: 'connect_failed', message: String(error?.message ?? error) });
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    // A hub that accepts the TCP connection but never answers (frozen, overloaded, a
    // black hole on the path) would otherwise hold this attempt open for good.
    this._watch(this._options.connectTimeout, () => this._drop(CONNECT_TIMEOUT));
    ws.onopen = () => {
      // The token goes in the first frame, not the URL: URLs end up in logs.
      if (this._ws === ws && this._token !== null) this._send({ type: 'connect', token: this._token });
    };
    ws.onmessage = (event) => {
      if (this._ws !== ws) return;
      this._onFrame(typeof event.data === 'string' ? event.data : String(event.data));
    };
    ws.onclose = (event) => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._onDisconnect(event?.code, event?.reason);
    };
    ws.onerror = () => {
      // A close event always follows; reconnecting is decided there.
    };
  }

  /** Ends the current socket at once and reconnects, reporting `closed` ({code, reason}). */
  _drop(closed) {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    drop(ws);
    this._onDisconnect(closed.code, closed.reason);
  }

  _watch(delay, fire) {
    clearTimeout(this._watchdog);
    this._watchdog = setTimeout(() => {
      this._watchdog = null;
      fire();
    }, delay);
  }

  _stopWatchdog() {
    clearTimeout(this._watchdog);
    this._watchdog = null;
  }

  /**
   * The liveness check, run by the watchdog while open. A browser cannot see WebSocket
   * pings, and a link that died without a FIN (a frozen or unplugged node, a NAT that
   * forgot us) looks open forever; so after `pingInterval` of silence the client asks with
   * a `ping` frame, and any frame within `pongTimeout` proves the link alive.
   */
  _checkLiveness() {
    const { pingInterval, pongTimeout } = this._options;
    if (this._pingSentAt !== null) {
      this._drop(LINK_DEAD);
      return;
    }
    const quiet = monotonic() - this._heardAt;
    if (quiet < pingInterval) {
      this._watch(pingInterval - quiet, () => this._checkLiveness());
      return;
    }
    this._pingSentAt = monotonic();
    this._send({ type: 'ping' });
    this._watch(pongTimeout, () => this._checkLiveness());
  }

  _onFrame(text) {
    // Any frame proves the link alive; a timestamp, not a timer reset, so a busy
    // connection costs nothing more per message.
    this._heardAt = monotonic();
    this._pingSentAt = null;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'welcome':
        // A hub without token keys greets first and answers `connect` with a second one.
        if (this._state !== State.OPEN) this._onWelcome(frame);
        break;
      case 'refreshed':
        this._refreshing = false;
        if (typeof frame.exp === 'number') this._tokenExp = frame.exp * 1000;
        this._scheduleRefresh();
        break;
      case 'subscribed':
        if (this._leaving.size === 0 || !this._leaving.has(frame.channel)) this._onSubscribed(frame);
        break;
      case 'message':
        if (this._leaving.size === 0 || !this._leaving.has(frame.channel)) this._onMessage(frame);
        break;
      case 'unsubscribed':
        this._left(frame.channel);
        break;
      case 'published':
        this._settlePublish(frame.id, (p) => p.resolve(frame.offset));
        break;
      case 'error':
        this._onError(frame);
        break;
      default:
        // `pong` and frames of later protocol versions: their arrival was all that counted.
        break;
    }
  }

  /** The hub answered an `unsubscribe` for `channel`. */
  _left(channel) {
    const outstanding = this._leaving.get(channel);
    if (outstanding === undefined) return;
    if (outstanding <= 1) this._leaving.delete(channel);
    else this._leaving.set(channel, outstanding - 1);
  }

  _onWelcome(frame) {
    this._node = frame.node;
    this._user = typeof frame.user === 'string' ? frame.user : null;
    this._refusedOnce = false;
    this._attempt = 0;
    this._openedAt = monotonic();
    this._stopWatchdog();
    if (this._options.pingInterval !== null) {
      this._heardAt = this._openedAt;
      this._pingSentAt = null;
      this._watch(this._options.pingInterval, () => this._checkLiveness());
    }
    this._setState(State.OPEN, { force: true });
    this._scheduleRefresh();
    this._emit('welcome', { node: frame.node, user: this._user });
    for (const channel of this._channels.keys()) this._sendSubscribe(channel);
    for (const pending of this._publishes.values()) {
      if (!pending.sent) this._sendPublish(pending);
    }
  }

  _sendSubscribe(channel) {
    const entry = this._channels.get(channel);
    if (!entry) return;
    entry.live = false;
    const frame = { type: 'subscribe', channel };
    if (entry.token === null && this._options.getSubscriptionToken) {
      const ws = this._ws;
      Promise.resolve()
        .then(() => this._options.getSubscriptionToken(channel))
        .then((token) => {
          if (typeof token !== 'string' || token === '') throw new TypeError(`getSubscriptionToken gave no token for ${channel}`);
          // Unsubscribed, or on another connection, meanwhile: that one subscribes anew.
          if (this._ws !== ws || this._channels.get(channel) !== entry || entry.live) return;
          frame.token = token;
          if (entry.last !== null) frame.since = entry.last;
          this._send(frame);
        })
        .catch((error) => {
          if (this._channels.get(channel) !== entry) return;
          const refused = failure('token_failed', String(error?.message ?? error));
          this._emit('error', { code: refused.code, message: refused.message, channel });
          this._channels.delete(channel);
          rejectAll(entry, refused);
        });
      return;
    }
    if (entry.token !== null) frame.token = entry.token;
    if (entry.last !== null) frame.since = entry.last;
    this._send(frame);
  }

  _sendPublish(pending) {
    pending.sent = true;
    this._send(pending.frame);
  }

  _onSubscribed(frame) {
    const entry = this._channels.get(frame.channel);
    if (!entry) return;
    const since = entry.last;
    if (since === null) {
      // First subscription without history: start after the channel's current top.
      entry.last = frame.offset;
    } else if (!frame.recovered) {
      this._emit('gap', { channel: frame.channel, since, offset: frame.offset });
    }
    entry.live = true;
    this._emit('subscribed', frame);
    for (const waiter of entry.pending.splice(0)) waiter.resolve(frame);
  }

  _onMessage(frame) {
    const entry = this._channels.get(frame.channel);
    if (!entry) return;
    // The seam between replay and live, and any overlap after a reconnect: keep one copy.
    if (entry.last !== null && frame.offset <= entry.last) return;
    entry.last = frame.offset;
    this._emit('message', { channel: frame.channel, offset: frame.offset, data: frame.data });
  }

  _onError(frame) {
    this._emit('error', frame);
    if (this._refreshing && frame.id === undefined && frame.channel === undefined && AUTH_CODES.has(frame.code)) {
      // The hub refused the refresh; the connection keeps its old token until it expires.
      this._refreshing = false;
      this._scheduleRefresh();
      return;
    }
    if (frame.id !== undefined) {
      this._settlePublish(frame.id, (p) => p.reject(Object.assign(failure(frame.code, frame.message), { sent: true })));
      return;
    }
    if (frame.channel !== undefined && this._leaving.has(frame.channel)) {
      // About the subscription the application left: `not_subscribed` answers the
      // unsubscribe (the subscribe before it had failed); anything else came before it.
      if (frame.code === 'not_subscribed') this._left(frame.channel);
      return;
    }
    const entry = frame.channel !== undefined ? this._channels.get(frame.channel) : undefined;
    if (!entry || entry.live) return;
    if (frame.code === 'broker_unavailable') {
      // The hub could not reach its broker: try again shortly on the same connection.
      setTimeout(() => {
        if (this._state === State.OPEN && this._channels.get(frame.channel) === entry && !entry.live) {
          this._sendSubscribe(frame.channel);
        }
      }, this._options.resubscribeDelay);
    } else if (frame.code !== 'already_subscribed') {
      this._channels.delete(frame.channel);
      rejectAll(entry, failure(frame.code, frame.message));
    }
  }

  /** Settles publish `id` once, if it is still waiting: later answers find nothing. */
  _settlePublish(id, settle) {
    const pending = this._publishes.get(id);
    if (!pending) return;
    this._publishes.delete(id);
    clearTimeout(pending.timer);
    settle(pending);
  }

  _send(frame) {
    try {
      this._ws?.send(JSON.stringify(frame));
    } catch {
      // The socket is closing; the close handler reconnects and resubscribes.
    }
  }

  /** The connection ended with WebSocket close `code` (and `reason`): reconnect. */
  _onDisconnect(code, reason) {
    this._stopWatchdog();
    this._stopRefresh();
    this._user = null;
    const openedFor = this._openedAt === null ? 0 : monotonic() - this._openedAt;
    this._openedAt = null;
    this._node = null;
    this._leaving.clear();
    for (const entry of this._channels.values()) entry.live = false;
    // Publishes in flight may or may not have reached the hub: tell the caller.
    for (const [id, pending] of [...this._publishes]) {
      if (!pending.sent) continue;
      const error = failure('disconnected', 'connection lost before the hub answered');
      this._settlePublish(id, (p) => p.reject(Object.assign(error, { sent: true })));
    }
    if (this._stopped) return;
    const reaction = reactionTo(code);
    const closed = closeInfo(code, reason);
    if (reaction === Reaction.NEW_TOKEN || reaction === Reaction.REFUSED) {
      this._onAuthClose(reaction, closed, openedFor);
      return;
    }
    this._scheduleReconnect(closed, reaction, openedFor);
  }

  /** 4001 or 4003: fetch a fresh token and come back, or stop if that cannot help. */
  _onAuthClose(reaction, closed, openedFor) {
    const expired = reaction === Reaction.NEW_TOKEN;
    // The token that was closed on is never sent again.
    this._token = null;
    this._tokenExp = null;
    const canRetry = this._options.getToken && (expired || !this._refusedOnce);
    if (!canRetry) {
      const code = expired ? 'token_expired' : 'unauthorized';
      const error = failure(code, expired
        ? 'the connection token expired and there is no getToken to fetch another'
        : 'the hub refused the connection token; not retrying with it');
      this._emit('error', { code, message: error.message, fatal: true, close: closed.code });
      this._halt(error, closed);
      return;
    }
    if (!expired) this._refusedOnce = true;
    if (expired) {
      // An expiry is no failure: come back at once (jittered), with a fresh token.
      this._pushback = 0;
      this._attempt = 0;
      this._scheduleReconnect(closed, Reaction.RESUME_NOW, openedFor, 'expired');
    } else {
      this._scheduleReconnect(closed, Reaction.RETRY, openedFor, 'refused');
    }
  }

  /**
   * Waits out the delay `reaction` calls for, then opens again; `closed` joins the state
   * event. `openedFor` is how long the connection that ended had been open (ms).
   */
  _scheduleReconnect(closed = {}, reaction = Reaction.RETRY, openedFor = 0, tokenReason = 'connect') {
    if (this._stopped) return;
    const { maxDelay, restartJitter } = this._options;
    let delay;
    if (reaction === Reaction.RESUME_NOW) {
      // A restart or a drain is no failure: start over, only jittered.
      this._pushback = 0;
      this._attempt = 0;
      delay = Math.floor(this._random() * restartJitter);
    } else {
      if (reaction === Reaction.BACK_OFF) {
        // Asked again soon after coming back: step further back each time.
        if (openedFor >= maxDelay) this._pushback = 0;
        this._pushback += 1;
        this._attempt = Math.max(this._attempt, this._pushback + PUSHBACK_FLOOR);
      } else {
        this._pushback = 0;
      }
      delay = backoffDelay(this._attempt, this._options, this._random);
    }
    this._attempt += 1;
    this._setState(State.RECONNECTING, { attempt: this._attempt, delay, ...closed, force: true });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._stopped) this._open(State.RECONNECTING, tokenReason);
    }, delay);
  }
}

/**
 * Backoff steps a 1013 or 1008 close skips: the first waits below minDelay × 2^2 (1 s
 * with the defaults), each consecutive one a step more, up to maxDelay.
 */
const PUSHBACK_FLOOR = 1;

/** The close `close()` sends: a normal closure the hub counts as the client leaving. */
const CLIENT_CLOSED = Object.freeze({ code: 1000, reason: 'client closed' });

/** What `reconnect()` reports: the code a browser gives a connection cut without a close frame. */
const DROPPED = Object.freeze({ code: 1006, reason: 'reconnect()' });

/** What a connection attempt that got no `welcome` within `connectTimeout` reports. */
const CONNECT_TIMEOUT = Object.freeze({ code: 1006, reason: 'connect timeout' });

/** What a link that did not answer the liveness `ping` within `pongTimeout` reports. */
const LINK_DEAD = Object.freeze({ code: 1006, reason: 'ping timeout' });

/** Error codes of the hub's token checks (answers to `connect`, `refresh`, subscription tokens). */
const AUTH_CODES = new Set(['unauthorized', 'forbidden', 'token_expired']);

/**
 * The `exp` of JWT `token` in epoch ms, read from its payload without verifying it (the
 * hub verifies; the client only needs to know when to refresh), or null if it has none.
 */
export function tokenExpiry(token) {
  try {
    const payload = token.split('.')[1];
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    const json = new TextDecoder().decode(bytes);
    const { exp } = JSON.parse(json);
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

/** Checks the authentication options' types, so a mistake shows at construction. */
function checkAuthOptions(options) {
  if (options.token !== undefined && (typeof options.token !== 'string' || options.token === '')) {
    throw new TypeError('option token must be a non-empty string (a JWT)');
  }
  for (const name of ['getToken', 'getSubscriptionToken']) {
    if (options[name] !== undefined && typeof options[name] !== 'function') {
      throw new TypeError(`option ${name} must be a function`);
    }
  }
}

/** An `Error` with the `code` the application branches on. */
function failure(code, message) {
  return Object.assign(new Error(message), { code });
}

/** Rejects every promise waiting on a channel's `subscribed`. */
function rejectAll(entry, error) {
  for (const waiter of entry.pending.splice(0)) waiter.reject(error);
}

/** Checks option `name` is a usable number of milliseconds (or null where that means off). */
function checkDuration(name, value) {
  if (value === null && NULLABLE.has(name)) return;
  const positive = name !== 'restartJitter';
  // Timers take at most 2^31 - 1 ms; a longer one would fire at once.
  if (typeof value !== 'number' || !(value >= (positive ? 1 : 0) && value <= MAX_TIMER)) {
    const expected = `a number of milliseconds from ${positive ? 1 : 0} to ${MAX_TIMER}`;
    throw new TypeError(`option ${name} must be ${expected}${NULLABLE.has(name) ? ' (or null: off)' : ''}; got ${typeof value === 'string' ? JSON.stringify(value) : String(value)}`);
  }
}

const MAX_TIMER = 2 ** 31 - 1;

/** Milliseconds from a clock that does not jump when the wall clock is set. */
const monotonic = typeof globalThis.performance?.now === 'function' ? () => globalThis.performance.now() : () => Date.now();

/** `{code, reason}` for the state event, leaving out what the runtime did not give. */
function closeInfo(code, reason) {
  const info = {};
  if (typeof code === 'number') info.code = code;
  if (typeof reason === 'string' && reason !== '') info.reason = reason;
  return info;
}

/**
 * Ends `ws` without waiting for the close handshake: `terminate()` where the runtime has
 * it (the `ws` package destroys the TCP socket at once, as a cut network would), else
 * `close()`, which browsers finish in the background. Its handlers are already ignored.
 */
function drop(ws) {
  try {
    if (typeof ws.terminate === 'function') ws.terminate();
    else ws.close();
  } catch {
    // A socket that never opened may refuse to close; it is gone either way.
  }
}

/** Cycles through `urls`, one per call. */
function rotate(urls) {
  if (urls.length === 0) throw new TypeError('at least one URL is needed');
  let next = 0;
  return () => urls[next++ % urls.length];
}

/** Full-jitter exponential backoff: a uniform delay below min(max, base * 2^attempt). */
export function backoffDelay(attempt, { minDelay = DEFAULTS.minDelay, maxDelay = DEFAULTS.maxDelay } = {}, random = Math.random) {
  return Math.floor(random() * Math.min(maxDelay, minDelay * 2 ** attempt));
}
