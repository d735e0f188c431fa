// TEMPORARY: raw-protocol stand-in until clients/js lands; replaced by the project client.
export function connectRoom({ url, channel, since, onState, onWelcome, onSubscribed, onMessage, onError }) {
  let ws = null;
  let last = since;
  let attempt = 0;
  let open = false;
  function connect() {
    onState(attempt === 0 ? 'connecting' : 'reconnecting');
    ws = new WebSocket(url);
    ws.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === 'welcome') {
        open = true; attempt = 0;
        onWelcome(frame.node);
        onState('open');
        ws.send(JSON.stringify({ type: 'subscribe', channel, since: last }));
      } else if (frame.type === 'subscribed') onSubscribed(frame);
      else if (frame.type === 'message') {
        if (last == null || frame.offset > last) { last = frame.offset; onMessage(frame.offset, frame.data); }
      } else if (frame.type === 'error') onError(frame);
    };
    ws.onclose = (event) => {
      open = false;
      attempt += 1;
      const delayMs = Math.random() * Math.min(5000, 250 * 2 ** attempt);
      onState('reconnecting', { delayMs, reason: `close ${event.code}` });
      setTimeout(connect, delayMs);
    };
  }
  connect();
  return {
    isOpen: () => open,
    publish: (data) => ws.send(JSON.stringify({ type: 'publish', channel, data })),
    cut: () => ws.close(),
  };
}
