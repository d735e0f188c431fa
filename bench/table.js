// Turns compare.sh's results (one JSON line per generator run) into the markdown table of
// bench/results/latest.md: each figure per target, tether's ratio to each peer, and whether
// the project's target for that figure is met.
//
// Usage: node bench/table.js results.jsonl  (BENCH_DATE, BENCH_MACHINE, BENCH_IDLE_N and
// BENCH_COMMAND, when set, go into the header).

"use strict";

const fs = require("node:fs");

const lines = fs.readFileSync(process.argv[2], "utf8").split("\n").filter(Boolean);
const runs = new Map(lines.map((l) => JSON.parse(l)).map((r) => [`${r.target}/${r.run}`, r.result]));
const get = (target, run, pick) => {
  const r = runs.get(`${target}/${run}`);
  if (!r) return null;
  const v = pick(r);
  return typeof v === "number" && Number.isFinite(v) ? v : null;
};

const PEERS = ["haproxy", "nginx"];
const fmt = (v, digits = 1) => {
  if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(digits);
};
const ratio = (a, b) => (a === null || b === null || b === 0 ? null : a / b);
const added = (target, run, field) => {
  const t = get(target, run, (r) => r.latency[field]);
  const d = get("direct", run, (r) => r.latency[field]);
  return t === null || d === null ? null : t - d;
};

// Each row: label, value per target, and how tether's figure is judged against the peers.
const rows = [
  {
    label: "proxy CPU per round trip, µs (64 conn × 64 B)",
    value: (t) => get(t, "lat64", (r) => r.server_cpu_us_per_msg),
    goal: "< both peers",
    met: (r) => r.every((x) => x !== null && x < 1),
  },
  {
    label: "added latency p50 @1 conn, µs",
    value: (t) => added(t, "lat1", "p50_us"),
    goal: "< both peers",
    met: (r, v) => PEERS.every((p) => v.tether !== null && v[p] !== null && v.tether < v[p]),
  },
  {
    label: "added latency p99 @1 conn, µs",
    value: (t) => added(t, "lat1", "p99_us"),
    goal: "< both peers",
    met: (r, v) => PEERS.every((p) => v.tether !== null && v[p] !== null && v.tether < v[p]),
  },
  {
    label: "added latency p50 @64 conn, µs",
    value: (t) => added(t, "lat64", "p50_us"),
    goal: "< both peers",
    met: (r, v) => PEERS.every((p) => v.tether !== null && v[p] !== null && v.tether < v[p]),
  },
  {
    label: "added latency p99 @64 conn, µs",
    value: (t) => added(t, "lat64", "p99_us"),
    goal: "< both peers",
    met: (r, v) => PEERS.every((p) => v.tether !== null && v[p] !== null && v.tether < v[p]),
  },
  {
    label: "messages/s @64 conn × 4 KiB",
    value: (t) => get(t, "tput", (r) => r.msgs_per_sec),
    goal: "≥ better peer",
    met: (r, v) => v.tether !== null && PEERS.every((p) => v[p] !== null && v.tether >= v[p]),
  },
  {
    label: `proxy memory per idle tunnel, bytes (N = ${process.env.BENCH_IDLE_N || "?"})`,
    value: (t) => get(t, "idle", (r) => r.server_rss_bytes_per_conn),
    goal: "≤ 0.5 × HAProxy",
    met: (r) => r[0] !== null && r[0] <= 0.5,
  },
  {
    label: "proxy CPU per handshake, µs",
    value: (t) => get(t, "handshake", (r) => r.server_cpu_us_per_handshake),
    goal: "< both peers",
    met: (r) => r.every((x) => x !== null && x < 1),
  },
];

const out = [];
out.push(`# tether vs HAProxy vs nginx${runs.has("tether-hub/fanout") || runs.has("socketio/fanout") ? " · tether hub vs Socket.IO" : ""}`);
out.push("");
if (process.env.BENCH_DATE) out.push(`- date: ${process.env.BENCH_DATE}`);
if (process.env.BENCH_MACHINE) out.push(`- machine: ${process.env.BENCH_MACHINE}`);
if (process.env.BENCH_LOAD) out.push(`- ${process.env.BENCH_LOAD}`);
if (process.env.BENCH_COMMIT) out.push(`- tether: ${process.env.BENCH_COMMIT}`);
if (process.env.BENCH_COMMAND) out.push(`- command: \`${process.env.BENCH_COMMAND.trim()}\``);
out.push("");

const haveProxies = ["direct", ...PEERS, "tether"].some((t) => runs.has(`${t}/lat1`));
if (haveProxies) {
  out.push("| figure | direct | HAProxy | nginx | tether | tether/HAProxy | tether/nginx | target | met |");
  out.push("|---|---:|---:|---:|---:|---:|---:|---|:-:|");
  for (const row of rows) {
    const v = Object.fromEntries(["direct", ...PEERS, "tether"].map((t) => [t, row.value(t)]));
    const r = PEERS.map((p) => ratio(v.tether, v[p]));
    const met = row.met(r, v);
    out.push(
      `| ${row.label} | ${fmt(v.direct)} | ${fmt(v.haproxy)} | ${fmt(v.nginx)} | ${fmt(v.tether)} | ` +
        `${fmt(r[0], 2)} | ${fmt(r[1], 2)} | ${row.goal} | ${met ? "yes" : "no"} |`,
    );
  }
  out.push("");
  const checks = [];
  for (const t of [...PEERS, "tether"]) {
    const idle = runs.get(`${t}/idle`);
    if (idle) {
      checks.push(
        `${t}: ${idle.opened}/${idle.requested} idle tunnels opened, ${idle.still_open} still open after the hold, ` +
          `${idle.sample_answered}/${idle.sampled} sampled answered`,
      );
    }
    const errors = ["lat1", "lat64", "tput", "handshake"]
      .map((run) => [run, runs.get(`${t}/${run}`)])
      .filter(([, r]) => r && r.errors > 0)
      .map(([run, r]) => `${run}: ${r.errors} errors`);
    if (errors.length) checks.push(`${t}: ${errors.join(", ")}`);
    const failed = ["lat1", "lat64", "tput", "handshake", "idle"].filter(
      (run) => runs.has(`${t}/${run}`) && runs.get(`${t}/${run}`) === null,
    );
    if (failed.length) checks.push(`${t}: runs failed: ${failed.join(", ")}`);
  }
  const gen = ["direct", ...PEERS, "tether"]
    .map((t) => [t, get(t, "tput", (r) => r.generator_cpu_pct)])
    .filter(([, v]) => v !== null)
    .map(([t, v]) => `${t} ${fmt(v, 0)}%`);
  if (gen.length) {
    checks.push(
      `generator CPU during the 4 KiB throughput run (one thread; ≈100% means the generator set the pace): ${gen.join(", ")}`,
    );
  }
  if (checks.length) {
    out.push("Checks:");
    for (const c of checks) out.push(`- ${c}`);
    out.push("");
  }
}

const fan = (t) => runs.get(`${t}/fanout`);
if (fan("socketio") !== undefined || fan("tether-hub") !== undefined) {
  out.push("| hub fan-out (2 nodes, shared Redis) | Socket.IO + Redis adapter | tether hub | tether/Socket.IO | target | met |");
  out.push("|---|---:|---:|---:|---|:-:|");
  const best = (t) => (fan(t) ? fan(t).best_deliveries_per_sec : null);
  const bestStep = (t) => (fan(t) ? fan(t).steps.find((s) => s.pass && s.deliveries_per_sec === fan(t).best_deliveries_per_sec) : null);
  const r = ratio(best("tether-hub"), best("socketio"));
  const subs = fan("tether-hub")?.subscribers ?? fan("socketio")?.subscribers ?? "?";
  out.push(
    `| highest deliveries/s with p99 ≤ 50 ms and zero loss (${subs} subscribers) | ${fmt(best("socketio"))} | ` +
      `${fmt(best("tether-hub"))} | ${fmt(r, 2)} | ≥ 10 × Socket.IO | ${r !== null && r >= 10 ? "yes" : "no"} |`,
  );
  const p99 = (t) => (bestStep(t) ? bestStep(t).latency.p99_us / 1000 : null);
  out.push(`| p99 at that rate, ms | ${fmt(p99("socketio"))} | ${fmt(p99("tether-hub"))} | | | |`);
  const rate = (t) => (fan(t) ? fan(t).best_rate : null);
  out.push(`| publish rate at that step, msg/s | ${fmt(rate("socketio"))} | ${fmt(rate("tether-hub"))} | | | |`);
  const sustained = (t) => (fan(t) ? fan(t).best_sustained_deliveries_per_sec : null);
  out.push(
    `| highest deliveries/s with zero loss and p99 ≤ 1 s | ${fmt(sustained("socketio"))} | ${fmt(sustained("tether-hub"))} | ` +
      `${fmt(ratio(sustained("tether-hub"), sustained("socketio")), 2)} | | |`,
  );
  out.push("");
  // The whole curve: each step's rate with both servers' results side by side.
  const rates = [...new Set(["socketio", "tether-hub"].flatMap((t) => (fan(t) ? fan(t).steps.map((s) => s.rate) : [])))].sort((a, b) => a - b);
  if (rates.length) {
    out.push("| publish rate, msg/s | Socket.IO deliveries/s | p50 / p99, ms | lost | tether hub deliveries/s | p50 / p99, ms | lost |");
    out.push("|---:|---:|---:|---:|---:|---:|---:|");
    const cell = (t, r) => {
      const s = fan(t) ? fan(t).steps.find((x) => x.rate === r) : null;
      if (!s) return "– | – | –";
      const mark = s.pass ? "" : " ✗";
      return `${fmt(s.deliveries_per_sec)}${mark} | ${fmt(s.latency.p50_us / 1000)} / ${fmt(s.latency.p99_us / 1000)} | ${s.lost}`;
    };
    for (const r of rates) out.push(`| ${fmt(r)} | ${cell("socketio", r)} | ${cell("tether-hub", r)} |`);
    out.push("");
    out.push("✗: the step failed the pass rule (p99 > 50 ms or a message lost).");
    out.push("");
  }
  for (const t of ["socketio", "tether-hub"]) {
    const f = fan(t);
    if (f === null) out.push(`- ${t}: fan-out run failed`);
    if (!f) continue;
    const last = f.steps[f.steps.length - 1];
    if (last && !last.pass) {
      out.push(
        `- ${t}: the sweep stopped after ${fmt(last.rate)} msg/s → ${fmt(last.deliveries_per_sec)} deliveries/s, ` +
          `p99 ${fmt(last.latency.p99_us / 1000)} ms, lost ${last.lost}, ` +
          `generator CPU ${fmt(last.generator_cpu_pct ?? null, 0)}%`,
      );
    } else if (last) {
      out.push(`- ${t}: every step passed up to ${fmt(last.rate)} msg/s (the sweep's ceiling)`);
    }
    if (f.dropped_subscribers > 0) out.push(`- ${t}: ${f.dropped_subscribers} subscribers were disconnected by the server`);
    if (f.server_errors > 0) out.push(`- ${t}: ${f.server_errors} error frames, first: \`${f.first_server_error}\``);
    const dup = f.steps.reduce((n, s) => n + s.duplicates, 0);
    if (dup > 0) out.push(`- ${t}: ${dup} duplicate deliveries`);
  }
  out.push("");
}

process.stdout.write(out.join("\n"));
