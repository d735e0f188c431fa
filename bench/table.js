// Turns compare.sh's results (one JSON line per generator run) into the markdown table of
// bench/results/latest.md: each figure per target, tether's ratio to each peer, and whether
// the project's target for that figure is met.
//
// Usage: node bench/table.js results.jsonl  (BENCH_DATE, BENCH_MACHINE, BENCH_IDLE_N and
// BENCH_COMMAND, when set, go into the header).
//
// With BENCH_DOC=docs/bench.md and BENCH_README=README.md (compare.sh sets them after a full
// run) it also writes the tables into those files, between their `<!-- bench:results:begin`
// / `<!-- bench:results:end -->` and `<!-- bench:headline:begin` / `<!-- bench:headline:end -->`
// markers, so the published figures are always the script's own output, never retyped.
// Either file without its markers is an error that leaves both files untouched.

"use strict";

const fs = require("node:fs");

const lines = fs.readFileSync(process.argv[2], "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
// Every round's result per target and run, in order; `runs` keeps the last round's (used for
// the checks and the fan-out curve), `get` takes the median over the rounds.
const rounds = new Map();
for (const r of lines) {
  const key = `${r.target}/${r.run}`;
  if (!rounds.has(key)) rounds.set(key, []);
  rounds.get(key).push(r.result);
}
const runs = new Map([...rounds].map(([k, rs]) => [k, rs[rs.length - 1]]));
const ROUNDS = Math.max(0, ...[...rounds.values()].map((rs) => rs.length));
const median = (xs) => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const values = (target, run, pick) =>
  (rounds.get(`${target}/${run}`) || [])
    .filter(Boolean)
    .map(pick)
    .filter((v) => typeof v === "number" && Number.isFinite(v));
const get = (target, run, pick) => median(values(target, run, pick));

const PEERS = ["haproxy", "nginx"];
const fmt = (v, digits = 1) => {
  if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(digits);
};
const ratio = (a, b) => (a === null || b === null || b === 0 ? null : a / b);
// Added latency: the median over rounds of (proxied − direct), each pair from the same round.
const added = (target, run, field) => {
  const t = rounds.get(`${target}/${run}`) || [];
  const d = rounds.get(`direct/${run}`) || [];
  const diffs = t
    .map((r, i) => (r && d[i] ? r.latency[field] - d[i].latency[field] : null))
    .filter((v) => typeof v === "number" && Number.isFinite(v));
  return median(diffs);
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
out.push(`# tether vs HAProxy vs nginx${[...runs.keys()].some((k) => k.endsWith("/fanout")) ? " · tether hub vs Socket.IO" : ""}`);
out.push("");
if (process.env.BENCH_DATE) out.push(`- date: ${process.env.BENCH_DATE}`);
if (process.env.BENCH_MACHINE) out.push(`- machine: ${process.env.BENCH_MACHINE}`);
if (process.env.BENCH_LOAD) out.push(`- ${process.env.BENCH_LOAD}`);
if (process.env.BENCH_COMMIT) out.push(`- tether: ${process.env.BENCH_COMMIT}`);
if (process.env.BENCH_COMMAND) out.push(`- command: \`${process.env.BENCH_COMMAND.trim()}\``);
if (ROUNDS > 1) out.push(`- every proxy figure is the median of ${ROUNDS} rounds (each round measures every target once, in turn)`);
out.push("");

// The headline tables (proxy figures, TLS rows, hub fan-out summary) for the README: each
// either [start, end) into `out` or its own lines.
const headline = [];
const haveProxies = ["direct", ...PEERS, "tether"].some((t) => runs.has(`${t}/lat1`));
if (haveProxies) {
  const start = out.length;
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
  headline.push([start, out.length]);
  out.push("");
  const checks = [];
  // Checks look at every round, not only the last: a round that failed or lost tunnels
  // must show even when the medians look fine.
  const all = (t, run) => rounds.get(`${t}/${run}`) || [];
  for (const t of [...PEERS, "tether"]) {
    all(t, "idle").forEach((idle, i) => {
      if (!idle) return;
      checks.push(
        `${t}${ROUNDS > 1 ? ` (round ${i + 1})` : ""}: ${idle.opened}/${idle.requested} idle tunnels opened, ` +
          `${idle.still_open} still open after the hold, ${idle.sample_answered}/${idle.sampled} sampled answered`,
      );
    });
    const errors = ["lat1", "lat64", "tput", "handshake"]
      .map((run) => [run, all(t, run).reduce((n, r) => n + (r ? r.errors || 0 : 0), 0)])
      .filter(([, n]) => n > 0)
      .map(([run, n]) => `${run}: ${n} errors`);
    if (errors.length) checks.push(`${t}: ${errors.join(", ")}`);
    const failed = ["lat1", "lat64", "tput", "handshake", "idle"]
      .map((run) => [run, all(t, run).filter((r) => r === null).length])
      .filter(([, n]) => n > 0)
      .map(([run, n]) => `${run} (${n} of ${all(t, run).length})`);
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

// User-space instructions per round trip (compare.sh --instructions): the long callgrind run
// minus the short one, so start-up and shutdown cancel.
const instructions = (t) => {
  const r = runs.get(`${t}/instructions`);
  return perUnit(r);
};
// (long − short) instructions ÷ (long − short) units of work; older results name the units
// `round_trips`.
function perUnit(r) {
  if (!r || !r.short || !r.long) return null;
  const units = (x) => x.count ?? x.round_trips;
  const done = units(r.long) - units(r.short);
  const spent = r.long.instructions - r.short.instructions;
  return done > 0 && spent > 0 ? spent / done : null;
}
if ([...PEERS, "tether"].some((t) => runs.has(`${t}/instructions`))) {
  const v = Object.fromEntries([...PEERS, "tether"].map((t) => [t, instructions(t)]));
  const r = PEERS.map((p) => ratio(v.tether, v[p]));
  out.push("| callgrind (16 conn × 64 B) | HAProxy | nginx | tether | tether/HAProxy | tether/nginx |");
  out.push("|---|---:|---:|---:|---:|---:|");
  out.push(
    `| user-space instructions per round trip (kernel not counted) | ${fmt(v.haproxy, 0)} | ${fmt(v.nginx, 0)} | ` +
      `${fmt(v.tether, 0)} | ${fmt(r[0], 2)} | ${fmt(r[1], 2)} |`,
  );
  out.push("");
}

// The TLS rows (compare.sh's tls_suite): each proxy terminating wss:// with the same
// certificate, ECDSA P-256 and RSA-2048; `tether-ring` is tether built with --features
// crypto-ring, shown beside the default (aws-lc-rs) build so the provider is chosen by
// measurement. Targets are judged against the better (lower) peer of the same run.
const TLS_KEYS = [
  ["ecdsa", "ECDSA P-256"],
  ["rsa", "RSA-2048"],
];
const haveTls = [...PEERS, "tether"].some((t) => rounds.has(`${t}/tls-hs-ecdsa`) || rounds.has(`${t}/tls-idle`));
const haveRing = [...rounds.keys()].some((k) => k.startsWith("tether-ring/"));
const better = (v) => {
  const peers = PEERS.map((p) => v[p]).filter((x) => x !== null);
  return peers.length === PEERS.length ? Math.min(...peers) : null;
};
const tlsRows = [
  ...TLS_KEYS.map(([key, name]) => ({
    label: `proxy CPU per full TLS handshake + upgrade, µs (${name})`,
    value: (t) => get(t, `tls-hs-${key}`, (r) => r.server_cpu_us_per_handshake),
    goal: "≤ 0.5 × better peer",
    met: (v) => v.tether !== null && better(v) !== null && v.tether <= 0.5 * better(v),
    headline: key === "ecdsa",
  })),
  ...[
    [1, 128],
    [1, 4096],
    [64, 128],
    [64, 4096],
  ].map(([conns, size]) => ({
    label: `proxy CPU per round trip over wss://, µs (${conns} conn × ${size === 4096 ? "4 KiB" : `${size} B`})`,
    value: (t) => get(t, `tls-rt${conns}-${size}`, (r) => r.server_cpu_us_per_msg),
    goal: "< both peers",
    met: (v) => v.tether !== null && better(v) !== null && v.tether < better(v),
  })),
  {
    label: `proxy memory per idle TLS tunnel, bytes (N = ${process.env.BENCH_IDLE_N || "?"})`,
    value: (t) => get(t, "tls-idle", (r) => r.server_rss_bytes_per_conn),
    goal: "≤ 0.5 × HAProxy",
    met: (v) => v.tether !== null && v.haproxy !== null && v.tether <= 0.5 * v.haproxy,
    headline: true,
  },
];
if (haveTls) {
  const targets = [...PEERS, "tether", ...(haveRing ? ["tether-ring"] : [])];
  const head =
    "| TLS 1.3 figure | HAProxy | nginx | tether | tether/HAProxy | tether/nginx | tether/better peer | target | met |" +
    (haveRing ? " tether (ring) | ring/aws-lc-rs |" : "");
  const rule = "|---|---:|---:|---:|---:|---:|---:|---|:-:|" + (haveRing ? "---:|---:|" : "");
  const lineOf = (row) => {
    const v = Object.fromEntries(targets.map((t) => [t, row.value(t)]));
    const cells =
      `| ${row.label} | ${fmt(v.haproxy)} | ${fmt(v.nginx)} | ${fmt(v.tether)} | ` +
      `${fmt(ratio(v.tether, v.haproxy), 2)} | ${fmt(ratio(v.tether, v.nginx), 2)} | ` +
      `${fmt(ratio(v.tether, better(v)), 2)} | ${row.goal} | ${row.met(v) ? "yes" : "no"} |`;
    return haveRing ? `${cells} ${fmt(v["tether-ring"])} | ${fmt(ratio(v["tether-ring"], v.tether), 2)} |` : cells;
  };
  out.push(head, rule);
  for (const row of tlsRows) out.push(lineOf(row));
  out.push("");
  // One or two rows of it for the README's headline.
  headline.push([head, rule, ...tlsRows.filter((r) => r.headline).map(lineOf)]);
  const checks = [];
  const all = (t, run) => rounds.get(`${t}/${run}`) || [];
  const tlsRuns = ["tls-idle", ...TLS_KEYS.map(([k]) => `tls-hs-${k}`), "tls-rt1-128", "tls-rt1-4096", "tls-rt64-128", "tls-rt64-4096"];
  for (const t of targets) {
    all(t, "tls-idle").forEach((idle, i) => {
      if (!idle) return;
      checks.push(
        `${t}${ROUNDS > 1 ? ` (round ${i + 1})` : ""}: ${idle.opened}/${idle.requested} idle TLS tunnels opened, ` +
          `${idle.still_open} still open after the hold, ${idle.sample_answered}/${idle.sampled} sampled answered`,
      );
    });
    const errors = tlsRuns
      .filter((run) => run !== "tls-idle")
      .map((run) => [run, all(t, run).reduce((n, r) => n + (r ? r.errors || 0 : 0), 0)])
      .filter(([, n]) => n > 0)
      .map(([run, n]) => `${run}: ${n} errors`);
    if (errors.length) checks.push(`${t}: ${errors.join(", ")}`);
    const failed = tlsRuns
      .map((run) => [run, all(t, run).filter((r) => r === null).length])
      .filter(([, n]) => n > 0)
      .map(([run, n]) => `${run} (${n} of ${all(t, run).length})`);
    if (failed.length) checks.push(`${t}: TLS runs failed: ${failed.join(", ")}`);
  }
  const rate = targets
    .map((t) => [t, get(t, "tls-hs-ecdsa", (r) => r.handshakes_per_sec), get(t, "tls-hs-ecdsa", (r) => r.generator_cpu_pct)])
    .filter(([, v]) => v !== null)
    .map(([t, v, g]) => `${t} ${fmt(v, 0)}/s (generator ${fmt(g, 0)}%)`);
  if (rate.length) checks.push(`ECDSA handshakes per second (16 clients cycling; the generator pays for TLS too): ${rate.join(", ")}`);
  if (checks.length) {
    out.push("TLS checks:");
    for (const c of checks) out.push(`- ${c}`);
    out.push("");
  }
}

// User-space instructions per full TLS handshake + upgrade + close (compare.sh
// --instructions), per key type.
const tlsInstr = TLS_KEYS.filter(([key]) => [...rounds.keys()].some((k) => k.endsWith(`/tls-hs-instructions-${key}`)));
if (tlsInstr.length) {
  const targets = [...PEERS, "tether", ...(haveRing ? ["tether-ring"] : [])];
  out.push(
    "| callgrind, TLS 1.3 (4 clients cycling) | HAProxy | nginx | tether | tether/better peer |" +
      (haveRing ? " tether (ring) | ring/aws-lc-rs |" : ""),
  );
  out.push("|---|---:|---:|---:|---:|" + (haveRing ? "---:|---:|" : ""));
  for (const [key, name] of tlsInstr) {
    const v = Object.fromEntries(targets.map((t) => [t, perUnit(runs.get(`${t}/tls-hs-instructions-${key}`))]));
    const cells =
      `| user-space instructions per full handshake + upgrade + close (${name}) | ${fmt(v.haproxy, 0)} | ` +
      `${fmt(v.nginx, 0)} | ${fmt(v.tether, 0)} | ${fmt(ratio(v.tether, better(v)), 2)} |`;
    out.push(haveRing ? `${cells} ${fmt(v["tether-ring"], 0)} | ${fmt(ratio(v["tether-ring"], v.tether), 2)} |` : cells);
  }
  out.push("");
}

const fan = (t) => runs.get(`${t}/fanout`);
// The hub servers compared: Socket.IO, tether hub as shipped, and tether hub with the write
// delay compare.sh sets (BENCH_WRITE_DELAY).
const HUBS = [
  ["socketio", "Socket.IO + Redis adapter"],
  ["tether-hub", "tether hub (defaults)"],
  ["tether-hub-batched", `tether hub, write_delay ${process.env.BENCH_WRITE_DELAY || "?"}`],
].filter(([t]) => fan(t) !== undefined);
const TETHER_HUBS = HUBS.filter(([t]) => t !== "socketio");
if (HUBS.length) {
  const head = HUBS.map(([, name]) => name);
  const vs = TETHER_HUBS.map(([, name]) => `${name} / Socket.IO`);
  const start = out.length;
  out.push(`| hub fan-out (2 nodes, shared Redis) | ${[...head, ...vs].join(" | ")} | target | met |`);
  out.push(`|---|${[...head, ...vs].map(() => "---:").join("|")}|---|:-:|`);
  const best = (t) => (fan(t) ? fan(t).best_deliveries_per_sec : null);
  const bestStep = (t) => (fan(t) ? fan(t).steps.find((s) => s.pass && s.deliveries_per_sec === fan(t).best_deliveries_per_sec) : null);
  const ratios = TETHER_HUBS.map(([t]) => ratio(best(t), best("socketio")));
  const subs = HUBS.map(([t]) => fan(t)?.subscribers).find((n) => n) ?? "?";
  const row = (label, pick, withRatios) =>
    `| ${label} | ${HUBS.map(([t]) => fmt(pick(t))).join(" | ")} | ` +
    (withRatios ? ratios.map((r) => fmt(r, 2)).join(" | ") : TETHER_HUBS.map(() => "").join(" | "));
  const met = ratios.some((r) => r !== null && r >= 10);
  out.push(`${row(`highest deliveries/s with p99 ≤ 50 ms and zero loss (${subs} subscribers)`, best, true)} | ≥ 10 × Socket.IO | ${met ? "yes" : "no"} |`);
  out.push(`${row("p99 at that rate, ms", (t) => (bestStep(t) ? bestStep(t).latency.p99_us / 1000 : null), false)} | | |`);
  // Where the p99 comes from: the way in (first delivery) or the pass over all subscribers.
  const stepMs = (t, key) => (bestStep(t)?.[key] ? bestStep(t)[key].p50_us / 1000 : null);
  out.push(`${row("first delivery of a message at that rate, p50 ms (publish → broker → first write)", (t) => stepMs(t, "first_delivery"), false)} | | |`);
  out.push(`${row("last delivery of a message at that rate, p50 ms", (t) => stepMs(t, "last_delivery"), false)} | | |`);
  out.push(`${row("publish rate at that step, msg/s", (t) => (fan(t) ? fan(t).best_rate : null), false)} | | |`);
  out.push(`${row("highest deliveries/s with zero loss and p99 ≤ 1 s", (t) => (fan(t) ? fan(t).best_sustained_deliveries_per_sec : null), false)} | | |`);
  headline.push([start, out.length]);
  out.push("");
  // The whole curve: each step's rate with every server's result side by side.
  const rates = [...new Set(HUBS.flatMap(([t]) => (fan(t) ? fan(t).steps.map((s) => s.rate) : [])))].sort((a, b) => a - b);
  if (rates.length) {
    out.push(`| publish rate, msg/s | ${HUBS.map(([, name]) => `${name}: deliveries/s | p50 / p99, ms | lost`).join(" | ")} |`);
    out.push(`|---:|${HUBS.map(() => "---:|---:|---:").join("|")}|`);
    const cell = (t, r) => {
      const s = fan(t) ? fan(t).steps.find((x) => x.rate === r) : null;
      if (!s) return "– | – | –";
      const mark = s.pass ? "" : " ✗";
      return `${fmt(s.deliveries_per_sec)}${mark} | ${fmt(s.latency.p50_us / 1000)} / ${fmt(s.latency.p99_us / 1000)} | ${s.lost}`;
    };
    for (const r of rates) out.push(`| ${fmt(r)} | ${HUBS.map(([t]) => cell(t, r)).join(" | ")} |`);
    out.push("");
    out.push("✗: the step failed the pass rule (p99 > 50 ms or a message lost).");
    out.push("");
  }
  for (const [t] of HUBS) {
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

// Replaces what lies between a file's `<!-- bench:NAME:begin …-->` line and its
// `<!-- bench:NAME:end -->` marker; both markers stay. Returns the new text, or throws.
function replaceRegion(file, text, name, lines) {
  const begin = text.indexOf(`<!-- bench:${name}:begin`);
  const end = text.indexOf(`<!-- bench:${name}:end -->`);
  if (begin < 0 || end < 0 || end < begin) {
    throw new Error(`${file}: no <!-- bench:${name}:begin --> … <!-- bench:${name}:end --> markers`);
  }
  const afterBegin = text.indexOf("\n", begin) + 1;
  if (afterBegin === 0 || afterBegin > end) throw new Error(`${file}: the bench:${name}:begin marker must end its line`);
  return `${text.slice(0, afterBegin)}${lines.join("\n").trim()}\n${text.slice(end)}`;
}

const docFile = process.env.BENCH_DOC;
const readmeFile = process.env.BENCH_README;
if (docFile || readmeFile) {
  const command = (process.env.BENCH_COMMAND || "bench/compare.sh").trim();
  const took = process.env.BENCH_SECONDS ? ` (${process.env.BENCH_SECONDS} s)` : "";
  // Everything below the title: the header list, the tables, the checks.
  const results = [
    `The latest full unattended run of \`${command}\`${took}, written here by the script from its own output.`,
    "",
    ...out.slice(2),
  ];
  const when = process.env.BENCH_DATE ? ` on ${process.env.BENCH_DATE}` : "";
  const what = [process.env.BENCH_COMMIT && `tether ${process.env.BENCH_COMMIT}`, process.env.BENCH_MACHINE].filter(Boolean);
  const summary = [
    `Measured by \`${command}\`${when}${what.length ? ` (${what.join("; ")})` : ""}. ` +
      "Method, every figure and step, and earlier runs: [docs/bench.md](docs/bench.md).",
  ];
  for (const part of headline) {
    summary.push("", ...(typeof part[0] === "number" ? out.slice(part[0], part[1]) : part));
  }
  // Read and check both files before writing either: a run updates both or neither.
  const writes = [];
  try {
    if (docFile) writes.push([docFile, replaceRegion(docFile, fs.readFileSync(docFile, "utf8"), "results", results)]);
    if (readmeFile) writes.push([readmeFile, replaceRegion(readmeFile, fs.readFileSync(readmeFile, "utf8"), "headline", summary)]);
  } catch (e) {
    process.stderr.write(`table.js: ${e.message}; nothing written\n`);
    process.exit(1);
  }
  for (const [file, text] of writes) {
    const tmp = `${file}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  }
}
