// The comparison's writer: bench/table.js run on a small, made-up results file (the shape
// compare.sh writes) must put its tables into docs/bench.md and the README between their
// markers, leave every other line alone, and refuse without writing anything when a file
// has lost its markers. Run: node --test bench/
"use strict";

const test = require("node:test");
const assert = require("node:assert");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const { spawnSync } = require("node:child_process");

const TABLE = path.join(__dirname, "table.js");

const latency = (p50, p99) => ({ p50_us: p50, p99_us: p99, p999_us: p99, max_us: p99, mean_us: p50 });
const pingpong = (cpu, p50, p99, rate) => ({
  messages: 1000,
  msgs_per_sec: rate,
  latency: latency(p50, p99),
  errors: 0,
  generator_cpu_pct: 50,
  server_cpu_us_per_msg: cpu,
});
const idle = (bytes) => ({
  requested: 1000,
  opened: 1000,
  still_open: 1000,
  sampled: 100,
  sample_answered: 100,
  server_rss_bytes_per_conn: bytes,
});
const fanout = (best) => ({
  subscribers: 200,
  best_deliveries_per_sec: best,
  best_rate: best / 200,
  best_sustained_deliveries_per_sec: best * 2,
  dropped_subscribers: 0,
  server_errors: 0,
  steps: [
    {
      rate: best / 200,
      pass: true,
      deliveries_per_sec: best,
      latency: latency(10000, 40000),
      first_delivery: latency(5000, 9000),
      last_delivery: latency(30000, 40000),
      lost: 0,
      duplicates: 0,
      generator_cpu_pct: 40,
    },
  ],
});

function results() {
  const lines = [];
  const add = (target, run, result) => lines.push(JSON.stringify({ target, run, round: 1, result }));
  const proxies = { direct: 10, haproxy: 60, nginx: 70, tether: 50 };
  for (const [target, base] of Object.entries(proxies)) {
    add(target, "lat1", pingpong(20, base, base * 2, 5000));
    add(target, "lat64", pingpong(20, base * 3, base * 6, 40000));
    add(target, "tput", pingpong(30, base, base * 2, 31337));
    if (target !== "direct") {
      add(target, "idle", idle(target === "tether" ? 1777 : 4444));
      add(target, "handshake", { handshakes: 900, errors: 0, server_cpu_us_per_handshake: base * 3 });
    }
  }
  // TLS rows: tether (and its ring build) against both peers; HAProxy is the better peer
  // for handshakes, nginx for round trips.
  const tls = { haproxy: [900, 40, 30000], nginx: [1000, 30, 60000], tether: [400, 25, 12000], "tether-ring": [500, 26, 12500] };
  for (const [target, [hs, rt, mem]] of Object.entries(tls)) {
    add(target, "tls-hs-ecdsa", { handshakes: 900, errors: 0, handshakes_per_sec: 180, generator_cpu_pct: 90, server_cpu_us_per_handshake: hs });
    add(target, "tls-hs-rsa", { handshakes: 300, errors: 0, server_cpu_us_per_handshake: hs * 3 });
    for (const run of ["tls-rt1-128", "tls-rt1-4096", "tls-rt64-128", "tls-rt64-4096"]) add(target, run, pingpong(rt, 100, 200, 5000));
    add(target, "tls-idle", idle(mem));
    add(target, "tls-hs-instructions-ecdsa", {
      short: { instructions: 1e9, count: 100 },
      long: { instructions: 1e9 + hs * 2000 * 400, count: 500 },
    });
  }
  add("socketio", "fanout", fanout(20000));
  add("tether-hub", "fanout", fanout(424242));
  add("tether-hub-batched", "fanout", fanout(300000));
  return lines.join("\n") + "\n";
}

const DOC = [
  "# Benchmarks",
  "",
  "Method, kept by hand.",
  "",
  "<!-- bench:results:begin (written by bench/compare.sh) -->",
  "old results: 1,831 bytes",
  "<!-- bench:results:end -->",
  "",
  "## Earlier runs",
  "kept by hand too",
  "",
].join("\n");
const README = [
  "# tether",
  "",
  "<!-- bench:headline:begin (written by bench/compare.sh) -->",
  "old headline",
  "<!-- bench:headline:end -->",
  "",
  "## Documentation",
  "",
].join("\n");

function setup(doc = DOC, readme = README) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tether-table-"));
  const files = {
    results: path.join(dir, "results.jsonl"),
    doc: path.join(dir, "bench.md"),
    readme: path.join(dir, "README.md"),
  };
  fs.writeFileSync(files.results, results());
  fs.writeFileSync(files.doc, doc);
  fs.writeFileSync(files.readme, readme);
  return files;
}

function run(files) {
  return spawnSync(process.execPath, [TABLE, files.results], {
    encoding: "utf8",
    env: {
      ...process.env,
      BENCH_DOC: files.doc,
      BENCH_README: files.readme,
      BENCH_DATE: "2026-12-02 06:00 UTC",
      BENCH_COMMIT: "abc1234",
      BENCH_MACHINE: "2 cores (test)",
      BENCH_COMMAND: "bench/compare.sh --no-build",
      BENCH_SECONDS: "519",
      BENCH_IDLE_N: "1000",
      BENCH_WRITE_DELAY: "10ms",
    },
  });
}

test("a full run writes its own tables between the markers and nothing else", () => {
  const files = setup();
  const out = run(files);
  assert.strictEqual(out.status, 0, out.stderr);

  const doc = fs.readFileSync(files.doc, "utf8");
  const [before, rest] = doc.split("<!-- bench:results:begin (written by bench/compare.sh) -->\n");
  const [region, after] = rest.split("<!-- bench:results:end -->");
  assert.strictEqual(before, "# Benchmarks\n\nMethod, kept by hand.\n\n");
  assert.strictEqual(after, "\n\n## Earlier runs\nkept by hand too\n");
  assert.ok(!region.includes("old results"), region);
  assert.ok(region.startsWith("The latest full unattended run of `bench/compare.sh --no-build` (519 s)"), region);
  assert.ok(region.includes("- date: 2026-12-02 06:00 UTC"), region);
  assert.ok(region.includes("- tether: abc1234"), region);
  // The figures are the input's: tether's idle memory and the hub's best step.
  assert.ok(region.includes("| proxy memory per idle tunnel, bytes (N = 1000) | n/a | 4,444 | 4,444 | 1,777 | 0.40 | 0.40 | ≤ 0.5 × HAProxy | yes |"), region);
  assert.ok(region.includes("424,242"), region);
  // The region is what the script prints, below its title.
  const printed = out.stdout.split("\n").slice(2).join("\n").trim();
  assert.ok(region.includes(printed), "the doc holds the printed table");

  const readme = fs.readFileSync(files.readme, "utf8");
  const headline = readme.split("<!-- bench:headline:begin (written by bench/compare.sh) -->\n")[1].split("<!-- bench:headline:end -->")[0];
  assert.ok(readme.startsWith("# tether\n\n<!-- bench:headline:begin"), readme);
  assert.ok(readme.endsWith("<!-- bench:headline:end -->\n\n## Documentation\n"), readme);
  assert.ok(
    headline.startsWith(
      "Measured by `bench/compare.sh --no-build` on 2026-12-02 06:00 UTC (tether abc1234; 2 cores (test)). " +
        "Method, every figure and step, and earlier runs: [docs/bench.md](docs/bench.md).\n\n| figure | direct |",
    ),
    headline,
  );
  assert.ok(headline.includes("| hub fan-out (2 nodes, shared Redis) |"), headline);
  // The TLS rows: ratios to the better peer, the ring build beside the default one.
  assert.ok(
    region.includes(
      "| proxy CPU per full TLS handshake + upgrade, µs (ECDSA P-256) | 900.0 | 1,000 | 400.0 | 0.44 | 0.40 | 0.44 | ≤ 0.5 × better peer | yes | 500.0 | 1.25 |",
    ),
    region,
  );
  assert.ok(region.includes("| proxy CPU per full TLS handshake + upgrade, µs (RSA-2048) | 2,700 | 3,000 | 1,200 | 0.44 | 0.40 | 0.44 | ≤ 0.5 × better peer | yes |"), region);
  assert.ok(region.includes("| proxy CPU per round trip over wss://, µs (64 conn × 4 KiB) | 40.0 | 30.0 | 25.0 | 0.63 | 0.83 | 0.83 | < both peers | yes |"), region);
  assert.ok(region.includes("| proxy memory per idle TLS tunnel, bytes (N = 1000) | 30,000 | 60,000 | 12,000 | 0.40 | 0.20 | 0.40 | ≤ 0.5 × HAProxy | yes | 12,500 | 1.04 |"), region);
  assert.ok(region.includes("| user-space instructions per full handshake + upgrade + close (ECDSA P-256) | 1,800,000 | 2,000,000 | 800,000 | 0.44 | 1,000,000 | 1.25 |"), region);
  assert.ok(region.includes("tether: 1000/1000 idle TLS tunnels opened"), region);
  // The README gets the ECDSA handshake and idle memory rows only.
  assert.ok(headline.includes("| TLS 1.3 figure |"), headline);
  assert.ok(headline.includes("(ECDSA P-256) | 900.0"), headline);
  assert.ok(headline.includes("| proxy memory per idle TLS tunnel"), headline);
  assert.ok(!headline.includes("RSA-2048"), headline);
  assert.ok(!headline.includes("round trip over wss://"), headline);
  assert.ok(!headline.includes("| publish rate, msg/s |"), "the step-by-step curve stays in docs/bench.md");
  assert.ok(!headline.includes("Checks:"), headline);

  // Running again on its own output changes nothing: the markers survive a rewrite.
  const again = run(files);
  assert.strictEqual(again.status, 0, again.stderr);
  assert.strictEqual(fs.readFileSync(files.doc, "utf8"), doc);
  assert.strictEqual(fs.readFileSync(files.readme, "utf8"), readme);
});

test("a file without its markers is refused and neither file is touched", () => {
  const files = setup(DOC, "# tether\n\nno markers here\n");
  const out = run(files);
  assert.notStrictEqual(out.status, 0);
  assert.match(out.stderr, /README\.md: no <!-- bench:headline:begin --> … <!-- bench:headline:end --> markers; nothing written/);
  assert.strictEqual(fs.readFileSync(files.doc, "utf8"), DOC);
  assert.strictEqual(fs.readFileSync(files.readme, "utf8"), "# tether\n\nno markers here\n");
});

test("without BENCH_DOC and BENCH_README only the table is printed", () => {
  const files = setup();
  const out = spawnSync(process.execPath, [TABLE, files.results], {
    encoding: "utf8",
    env: { ...process.env, BENCH_DOC: "", BENCH_README: "" },
  });
  assert.strictEqual(out.status, 0, out.stderr);
  assert.match(out.stdout, /^# tether vs HAProxy vs nginx · tether hub vs Socket\.IO/);
  assert.strictEqual(fs.readFileSync(files.doc, "utf8"), DOC);
  assert.strictEqual(fs.readFileSync(files.readme, "utf8"), README);
});
