// The demo chat page: one room, every hub, nothing lost.
//
// All hub traffic goes through the project's JS client (clients/js, served as /tether.js):
// it keeps the last offset, reconnects with full-jitter backoff through the proxy and
// resubscribes with `since`. This file only draws what happens and explains it: which hub
// the page is on, when it lost it, and how many messages the next hub replayed from history.

import { TetherClient, State } from '/tether.js';

const $ = (id) => document.getElementById(id);
const proxy = location.host;
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${proxy}/ws`;

// Everything the page knows, in one place.
const page = {
  name: '',
  room: '',
  client: null,            // the TetherClient (clients/js)
  channel: '',
  node: null,              // hub of the current connection
  hubs: [],                // last /api/demo/hubs answer
  seen: new Map(),         // offset → <li>, each message once
  lastOffset: null,        // highest offset shown
  outbox: new Map(),       // mid → <li> of own messages not yet seen back
  unsure: new Set(),       // mids whose publish was cut off: resent after the replay if unseen
  stats: { received: 0, replayed: 0, duplicates: 0, reconnects: 0 },
  lostAt: null,            // when the connection dropped (ms), for the notice
  cutting: false,          // the page is closing the connection on purpose
  offsetAtLoss: null,      // the client's resume point when it dropped
  resume: null,            // between a resume's `subscribed` and its last replayed message:
                           // {top, replayed, away, recovered, notice}
};

// ---------- joining ----------

const adjectives = ['quick', 'calm', 'brave', 'bright', 'lucky', 'quiet', 'swift', 'keen'];
const animals = ['otter', 'lynx', 'heron', 'fox', 'panda', 'wren', 'yak', 'koala'];
const pick = (list) => list[Math.floor(Math.random() * list.length)];
$('name').value = localStorage.getItem('tether.name') || `${pick(adjectives)}-${pick(animals)}`;
$('room').value = new URLSearchParams(location.search).get('room') || localStorage.getItem('tether.room') || 'lobby';
$('proxy-addr').textContent = proxy;

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault();
  page.name = $('name').value.trim();
  page.room = $('room').value.trim();
  if (!page.name || !/^[A-Za-z0-9_-]{1,48}$/.test(page.room)) return;
  localStorage.setItem('tether.name', page.name);
  localStorage.setItem('tether.room', page.room);
  $('join').hidden = true;
  $('chat').hidden = false;
  $('me').textContent = page.name;
  $('room-name').textContent = `#${page.room}`;
  history.replaceState(null, '', `?room=${encodeURIComponent(page.room)}`);
  join().catch((error) => notice(`Could not join: ${error.message}`, 'bad'));
});

async function join() {
  // Show what the room already said, then go live from there: the client resumes from the
  // last offset of that history, so nothing between the two is lost or repeated.
  page.channel = `room:${page.room}`;
  const past = await fetchJson(`/api/history/${encodeURIComponent(page.channel)}`);
  for (const m of past.messages.slice(-50)) show(m.offset, m.data, { history: true });
  if (past.messages.length > 0) notice(`${past.messages.length} earlier message(s) from history`);
  const client = new TetherClient(wsUrl);
  page.client = client;
  client.on('state', showState);
  client.on('welcome', ({ node }) => arrived(node));
  client.on('subscribed', resumed);
  client.on('error', (error) => notice(`Hub said: ${error.code}: ${error.message}`, 'bad'));
  client.onMessage(({ channel, offset, data }) => {
    if (channel === page.channel) show(offset, data, {});
  });
  client.subscribe(page.channel, { since: past.offset }).catch((error) => {
    notice(`Could not subscribe: ${error.message}`, 'bad');
  });
  client.connect();
  $('text').focus();
  refreshHubs();
  setInterval(refreshHubs, 3000);
}

// ---------- connection story ----------

function showState({ state, delay }) {
  const pill = $('conn');
  pill.dataset.state = state;
  const text = {
    connecting: 'connecting…',
    open: `connected to ${page.node ?? 'hub'}`,
    reconnecting: `reconnecting${delay != null ? ` in ${(delay / 1000).toFixed(1)} s` : ''}…`,
    closed: 'disconnected',
  }[state] ?? state;
  $('conn-text').textContent = text;
  if (state === State.RECONNECTING || state === State.CLOSED) {
    if (page.lostAt == null && page.node != null) {
      page.lostAt = performance.now();
      // The client resumes from its own last offset, which is the channel's top at the first
      // subscribe even when nothing was shown yet; count what is missed from there.
      page.offsetAtLoss = page.client.lastOffset(page.channel);
      $('conn').dataset.lost = String(Number($('conn').dataset.lost) + 1);
      if (page.resume) {
        // Lost again before the replay finished; the next hub replays from the same point.
        page.resume.notice.textContent += ' interrupted.';
        page.resume = null;
      }
      if (!page.cutting) notice(`Lost ${page.node}; reconnecting through the proxy…`, 'warn');
    }
    $('node').textContent = '—';
  }
  updateButtons();
}

function arrived(node) {
  const previous = page.node;
  page.node = node;
  $('node').textContent = node;
  $('conn-text').textContent = `connected to ${node}`;
  if (previous != null && page.lostAt != null) page.stats.reconnects += 1;
  else if (previous == null) notice(`Joined #${page.room} on ${node}`);
  renderStats();
  renderHubs();
  updateButtons();
  refreshHubs();
}

function duration(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// After a resume the hub first says where the channel is (`offset`, its top), then replays
// what came after the client's last offset: the messages sent while the page was away. The
// notice is placed now, above them, and tells how many there were once the last has arrived
// (offsets are not contiguous across broker histories, so they are counted, not subtracted).
function resumed({ channel, offset, recovered }) {
  if (channel !== page.channel || page.lostAt == null) return;
  const away = duration(performance.now() - page.lostAt);
  const from = page.offsetAtLoss;
  page.lostAt = null;
  const li = notice(`Back on ${page.node} after ${away}; replaying what was missed…`);
  const resume = { top: offset, replayed: 0, away, recovered, notice: li };
  page.resume = resume;
  if (from == null || from >= offset) finishResume();
  // A history that does not reach back may hold nothing at all, so no replayed message will
  // mark the end: give the replay a moment, then say what came.
  else if (!recovered) setTimeout(() => { if (page.resume === resume) finishResume(); }, 1500);
}

function finishResume() {
  const { replayed, away, recovered, notice: li } = page.resume;
  page.resume = null;
  const count = `${replayed} message${replayed === 1 ? '' : 's'}`;
  if (!recovered) {
    // The hub could not promise its history reaches back to where the page left off.
    li.classList.add('bad');
    li.textContent = `Back on ${page.node} after ${away}. ${count} replayed from history, but the hub says its history no longer reaches back to where you left (recovered: false): earlier messages may be missing.`;
  } else if (replayed === 0) {
    li.classList.add('good');
    li.textContent = `Back on ${page.node} after ${away}. Nothing was sent meanwhile; nothing missing.`;
  } else {
    li.classList.add('good');
    li.textContent = `Back on ${page.node} after ${away}. ${count} sent while you were away ${replayed === 1 ? 'was' : 'were'} filled in from history — none lost, none twice.`;
  }
  resendUnsure();
}

// ---------- messages ----------

function show(offset, data, { history = false }) {
  if (page.seen.has(offset)) {
    page.stats.duplicates += 1;
    console.warn(`duplicate message at offset ${offset}`);
    renderStats();
    return;
  }
  const replayed = !history && page.resume != null && offset <= page.resume.top;
  page.stats.received += 1;
  if (replayed) page.stats.replayed += 1;
  const body = typeof data === 'object' && data !== null ? data : { text: String(data) };
  const mine = body.mid != null && page.outbox.has(body.mid);
  let li;
  if (mine) {
    li = page.outbox.get(body.mid);
    page.outbox.delete(body.mid);
    li.classList.remove('pending');
  } else {
    li = messageItem(body);
  }
  li.dataset.offset = String(offset);
  li.classList.toggle('replayed', replayed);
  li.querySelector('.meta').replaceChildren(...meta(offset, body, replayed));
  place(li, offset);
  page.seen.set(offset, li);
  page.lastOffset = page.lastOffset == null ? offset : Math.max(page.lastOffset, offset);
  if (replayed) page.resume.replayed += 1;
  if (page.resume != null && offset >= page.resume.top) finishResume();
  renderStats();
}

function messageItem(body) {
  const li = document.createElement('li');
  li.className = 'msg';
  if (body.user === page.name) li.classList.add('mine');
  const avatar = document.createElement('span');
  avatar.className = 'avatar';
  avatar.textContent = (body.user || '?').slice(0, 1).toUpperCase();
  avatar.style.background = colour(body.user || '?');
  const bubble = document.createElement('div');
  bubble.className = 'bubble';
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = body.user || 'someone';
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = body.text ?? '';
  const metaLine = document.createElement('div');
  metaLine.className = 'meta';
  bubble.append(who, text, metaLine);
  li.append(avatar, bubble);
  return li;
}

function meta(offset, body, replayed) {
  const parts = [`#${offset}`];
  if (body.via) parts.push(`sent via ${body.via}`);
  if (body.at) parts.push(new Date(body.at).toLocaleTimeString());
  const out = [document.createTextNode(parts.join(' · '))];
  if (replayed) {
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = 'from history';
    out.push(badge);
  }
  return out;
}

// Messages are kept in offset order whatever order they arrive in.
function place(li, offset) {
  const list = $('messages');
  let before = null;
  for (const other of list.querySelectorAll('li.msg[data-offset]')) {
    if (other !== li && Number(other.dataset.offset) > offset) { before = other; break; }
  }
  if (before) list.insertBefore(li, before);
  else list.append(li);
  stickToBottom();
}

function notice(text, tone = '') {
  const li = document.createElement('li');
  li.className = `notice ${tone}`;
  li.textContent = text;
  $('messages').append(li);
  stickToBottom();
  return li;
}

function stickToBottom() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

function colour(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.codePointAt(0)) % 360;
  return `hsl(${h} 55% 45%)`;
}

function renderStats() {
  const s = page.stats;
  $('stats').textContent = `received ${s.received} · replayed from history ${s.replayed} · duplicates ${s.duplicates} · reconnects ${s.reconnects}`;
  for (const [k, v] of Object.entries(s)) $('stats').dataset[k] = String(v);
}

// ---------- sending ----------

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('text').value.trim();
  if (!text || !page.client) return;
  $('text').value = '';
  const body = { user: page.name, text, mid: messageId(), at: Date.now() };
  const li = messageItem(body);
  li.classList.add('pending');
  li.querySelector('.meta').textContent = 'sending…';
  page.outbox.set(body.mid, li);
  $('messages').append(li);
  stickToBottom();
  send(body);
});

// A random id to recognise an own message when it comes back. Not crypto.randomUUID():
// that exists only in secure contexts, and a phone on the LAN opens the demo over plain http.
function messageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// The client queues a publish while it is disconnected and sends it on the next hub. A
// publish cut off in flight may or may not have reached the hub (the client promises at
// most once), so the page waits for the replay: if the message is in it, it was published;
// if not, it is sent again. Either way it appears exactly once.
function send(body) {
  page.client.publish(page.channel, { ...body, via: page.client.node ?? undefined }).catch((error) => {
    const li = page.outbox.get(body.mid);
    if (!li) return;
    if (error.code === 'disconnected' || error.message === 'client closed') {
      page.unsure.add(body.mid);
      li.dataset.body = JSON.stringify(body);
      li.querySelector('.meta').textContent = 'connection lost while sending; checking…';
    } else {
      li.querySelector('.meta').textContent = `not sent: ${error.message}`;
      page.outbox.delete(body.mid);
    }
  });
}

function resendUnsure() {
  for (const mid of page.unsure) {
    const li = page.outbox.get(mid);
    if (li) {
      li.querySelector('.meta').textContent = 'not in the replay; sending again…';
      send(JSON.parse(li.dataset.body));
    }
  }
  page.unsure.clear();
}

// ---------- hubs and buttons ----------

async function refreshHubs() {
  try {
    page.hubs = (await fetchJson('/api/demo/hubs')).hubs;
    renderHubs();
  } catch (error) {
    // The hub that would have answered may be the one just killed; the next poll will do.
    console.info(`hub list not refreshed: ${error.message}`);
  }
}

function renderHubs() {
  const items = page.hubs.map((hub) => {
    const li = document.createElement('li');
    li.dataset.state = hub.state;
    li.classList.toggle('current', hub.name === page.node);
    const dot = document.createElement('span');
    dot.className = 'dot';
    const label = document.createElement('span');
    const extra = hub.state === 'running'
      ? `${hub.counters?.connections ?? '?'} conn`
      : `${hub.state}${hub.back_in_ms != null ? `, back in ${Math.ceil(hub.back_in_ms / 1000)} s` : ''}`;
    label.textContent = `${hub.name} · ${extra}`;
    li.append(dot, label);
    return li;
  });
  $('hubs').replaceChildren(...items);
}

function updateButtons() {
  const open = page.client?.state === State.OPEN;
  const on = open ? page.node : null;
  $('kill').textContent = on ? `Kill ${on}` : 'Kill hub';
  $('drain').textContent = on ? `Drain ${on}` : 'Drain hub';
  for (const id of ['cut', 'kill', 'drain']) $(id).disabled = !on;
}

// The client has no "drop the socket but keep going" call: close it and connect again after
// a moment, long enough for others' messages to pile up and be replayed from history.
$('cut').addEventListener('click', () => {
  if (!page.client) return;
  notice(`Cut the connection to ${page.node}; reconnecting in 2 s.`, 'warn');
  page.cutting = true;
  page.client.close();
  page.cutting = false;
  setTimeout(() => page.client.connect(), 2000);
});
$('kill').addEventListener('click', () => takeDown('kill'));
$('drain').addEventListener('click', () => takeDown('drain'));

async function takeDown(how) {
  const hub = page.node;
  if (!hub) return;
  try {
    const response = await hubFetch(`/api/demo/hubs/${encodeURIComponent(hub)}/${how}`, { method: 'POST' });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      notice(`${how} ${hub} refused: ${body.message ?? response.status}`, 'bad');
      return;
    }
    notice(how === 'kill'
      ? `Killed ${hub}: its clients are dropped without a close frame. It restarts in a few seconds.`
      : `Draining ${hub}: it takes no new clients and closes each one with 1012 within 3 s.`, 'warn');
    refreshHubs();
  } catch (error) {
    notice(`${how} ${hub} failed: ${error.message}`, 'bad');
  }
}

// Requests for the hubs go without cookies. The browser then never sends them on a
// connection it kept alive after loading the dashboard (/_tether/), which the proxy answers
// itself and which does not lead to the hubs.
function hubFetch(path, init = {}) {
  return fetch(path, { ...init, credentials: 'omit' });
}

async function fetchJson(path) {
  const response = await hubFetch(path, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

renderStats();
updateButtons();
