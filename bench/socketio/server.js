// A Socket.IO node with the Redis adapter: the realtime setup tether hub is measured against.
//
// It offers the same three operations the fan-out benchmark uses on tether hub, as Socket.IO
// events: `subscribe` (channel name, acknowledged once joined), `publish` ({channel, data},
// broadcast to the channel's room on every node through Redis) and `message` ({channel, data},
// what subscribers receive). WebSocket transport only, no per-message compression: the same
// wire work as tether's JSON frames.
//
// Environment: PORT (7101), REDIS_URL (redis://127.0.0.1:6379), KEY_PREFIX (tether-bench-sio),
// NAME (sio-PORT). Prints {"listening":PORT,"name":NAME} on stdout once ready.

"use strict";

const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 7101);
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const keyPrefix = process.env.KEY_PREFIX || "tether-bench-sio";
const name = process.env.NAME || `sio-${port}`;

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  for (const client of [pub, sub]) {
    client.on("error", (err) => console.error(`${name}: redis: ${err.message}`));
  }
  await Promise.all([pub.connect(), sub.connect()]);

  const http = createServer((req, res) => {
    res.writeHead(req.url === "/health" ? 200 : 404, { "content-type": "text/plain" });
    res.end(name);
  });
  const io = new Server(http, {
    transports: ["websocket"],
    perMessageDeflate: false,
    adapter: createAdapter(pub, sub, { key: keyPrefix }),
  });

  io.on("connection", (socket) => {
    socket.on("subscribe", (channel, ack) => {
      if (typeof channel !== "string" || channel.length === 0) {
        if (typeof ack === "function") ack({ error: "channel must be a non-empty string" });
        return;
      }
      socket.join(channel);
      if (typeof ack === "function") ack({ channel });
    });
    socket.on("publish", (msg) => {
      if (!msg || typeof msg.channel !== "string") return;
      io.to(msg.channel).emit("message", { channel: msg.channel, data: msg.data });
    });
  });

  http.listen(port, "127.0.0.1", () => {
    console.log(JSON.stringify({ listening: port, name }));
  });

  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(`${name}: ${err.stack || err}`);
  process.exit(1);
});
