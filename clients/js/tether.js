// tether hub client for browsers and Node >= 20. Plain ES module, no dependencies.
//
// What it promises the application: per channel, messages arrive in offset order, each
// once, across reconnects to any node. It remembers the last offset seen on each channel,
// reconnects with full-jitter exponential backoff, and resubscribes with `since` so the
// hub replays what was missed; anything at or below the last offset is dropped here too.
// When the hub says `recovered: false` (its history no longer reaches back), the client
// emits a `gap` event: the app should reload its state from its own source of truth.

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
};

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
   * @param {() => number} [options.random] source of [0, 1) numbers for the jitter.
   */
  constructor(url, options = {}) {
    this._urls = typeof url === 'function' ? url : Array.isArray(url) ? rotate(url) : () => url;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new TypeError('no WebSocket constructor: pass options.WebSocket (e.g. the "ws" package on Node 20)');
    }
    this._options = { ...DEFAULTS, ...options };
    this._random = options.random ?? Math.random;
    this._state = State.CLOSED;
    this._node = null;
    this._ws = null;
    this._attempt = 0;
    this._timer = null;
    this._stopped = true;
    /** @type {Map<string, {last: number | null, pending: Array<{resolve: Function, reject: Function}>, live: boolean}>} */
    this._channels = new Map();
    this._publishes = new Map();
    this._outbox = [];
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

  /** Closes for good: no reconnect. Pending publishes are rejected. */
  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    let closed = {};
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
    this._failPublishes(new Error('client closed'));
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
    const ws = this._ws;
    this._ws = null;
    drop(ws);
    this._onDisconnect(DROPPED.code, DROPPED.reason);
    return this;
  }

  /**
   * Starts receiving `channel`. With `since`, the hub first replays what came after that
   * offset. Resolves with the hub's `subscribed` answer the first time it arrives.
   */
  subscribe(channel, { since } = {}) {
    let entry = this._channels.get(channel);
    if (!entry) {
      entry = { last: since ?? null, pending: [], live: false };
      this._channels.set(channel, entry);
      if (this._state === State.OPEN) this._sendSubscribe(channel);
    }
    if (entry.live) return Promise.resolve({ channel, offset: entry.last, recovered: true });
    return new Promise((resolve, reject) => entry.pending.push({ resolve, reject }));
  }

  /** Stops receiving `channel` and forgets its offset. */
  unsubscribe(channel) {
    if (!this._channels.delete(channel)) return;
    if (this._state === State.OPEN) this._send({ type: 'unsubscribe', channel });
  }

  /**
   * Publishes `data` (any JSON value but null) on `channel`; resolves with its offset.
   * Queued while disconnected. If the connection drops before the hub answers, the
   * promise rejects and the message may or may not have been published (at most once).
   */
  publish(channel, data) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._publishes.set(id, { resolve, reject });
      const frame = { type: 'publish', channel, data, id };
      if (this._state === State.OPEN) this._send(frame);
      else this._outbox.push(frame);
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

  _open(state) {
    this._setState(state, { attempt: this._attempt });
    let ws;
    try {
      ws = new this._WebSocket(this._urls());
    } catch (error) {
      this._emit('error', { code: 'connect_failed', message: String(error?.message ?? error) });
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
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

  _onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    switch (frame.type) {
      case 'welcome':
        this._onWelcome(frame);
        break;
      case 'subscribed':
        this._onSubscribed(frame);
        break;
      case 'message':
        this._onMessage(frame);
        break;
      case 'published':
        this._settlePublish(frame.id, (p) => p.resolve(frame.offset));
        break;
      case 'error':
        this._onError(frame);
        break;
      default:
        break;
    }
  }

  _onWelcome(frame) {
    this._node = frame.node;
    this._attempt = 0;
    this._setState(State.OPEN, { force: true });
    this._emit('welcome', { node: frame.node });
    for (const channel of this._channels.keys()) this._sendSubscribe(channel);
    const outbox = this._outbox;
    this._outbox = [];
    for (const frame of outbox) this._send(frame);
  }

  _sendSubscribe(channel) {
    const entry = this._channels.get(channel);
    if (!entry) return;
    entry.live = false;
    const frame = { type: 'subscribe', channel };
    if (entry.last !== null) frame.since = entry.last;
    this._send(frame);
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
    if (frame.id !== undefined) {
      this._settlePublish(frame.id, (p) => p.reject(Object.assign(new Error(frame.message), { code: frame.code })));
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
      const error = Object.assign(new Error(frame.message), { code: frame.code });
      for (const waiter of entry.pending.splice(0)) waiter.reject(error);
    }
  }

  _settlePublish(id, settle) {
    const pending = this._publishes.get(id);
    if (!pending) return;
    this._publishes.delete(id);
    settle(pending);
  }

  _failPublishes(error) {
    for (const pending of this._publishes.values()) pending.reject(error);
    this._publishes.clear();
    this._outbox = [];
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
    this._node = null;
    for (const entry of this._channels.values()) entry.live = false;
    // Publishes in flight may or may not have reached the hub: tell the caller.
    const inFlight = [...this._publishes.entries()].filter(([id]) => !this._outbox.some((f) => f.id === id));
    for (const [id, pending] of inFlight) {
      this._publishes.delete(id);
      pending.reject(Object.assign(new Error('connection lost before the hub answered'), { code: 'disconnected' }));
    }
    if (this._stopped) return;
    // 1012: the node is restarting on purpose; start the backoff from the bottom.
    if (code === 1012) this._attempt = 0;
    this._scheduleReconnect(closeInfo(code, reason));
  }

  /** Waits out the next backoff delay, then opens again; `closed` joins the state event. */
  _scheduleReconnect(closed = {}) {
    if (this._stopped) return;
    const delay = backoffDelay(this._attempt, this._options, this._random);
    this._attempt += 1;
    this._setState(State.RECONNECTING, { attempt: this._attempt, delay, ...closed, force: true });
    clearTimeout(this._timer);
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._stopped) this._open(State.RECONNECTING);
    }, delay);
  }
}

/** The close `close()` sends: a normal closure the hub counts as the client leaving. */
const CLIENT_CLOSED = Object.freeze({ code: 1000, reason: 'client closed' });

/** What `reconnect()` reports: the code a browser gives a connection cut without a close frame. */
const DROPPED = Object.freeze({ code: 1006, reason: 'reconnect()' });

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
