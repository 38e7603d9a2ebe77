// make test-browser: real browsers against the real router.
//
// Starts build/mephisto-router (MEPHISTO_ROUTER_BIN overrides) on a free
// port of 127.0.0.1 with a temporary config whose static_dir is the built
// task page (dist/, `npm run build`), the fake backend of backend.mjs, and
// Debian's Chromium (/usr/bin/chromium, CHROMIUM_BIN overrides) headless,
// driven through playwright-core over the DevTools protocol. Three pages
// (separate browser contexts, so three workers) load the task page built on
// the published mephisto-task 2.0.4 and go through one task:
// registration, "in task", live updates both ways, a backend outage of 5 s,
// submissions (one multipart with a file), the file's download, and the
// accounting of every packet on both sides. Each check is printed as it
// ends; the last line is "N passed, N failed[, N skipped]".
//
// Every wait is bounded, the whole run is capped at 120 s, and the router,
// the backend and Chromium are killed by pid (process group) at the end,
// whatever happened. When a check fails, screenshots, each page's console,
// its WebSocket frames, the backend's packets and the router's log are kept
// in a folder under build/browser-test/ (BROWSER_TEST_ARTIFACTS overrides),
// whose path is printed.
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { FakeBackend, backendPacket, checkFrame, short } from "./backend.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const PKG = resolve(HERE, "..");
const REPO = resolve(PKG, "..", "..");
const ROUTER_BIN = resolve(process.env.MEPHISTO_ROUTER_BIN || join(REPO, "build", "mephisto-router"));
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const PAGE_DIR = join(PKG, "dist");
const ARTIFACTS_ROOT = resolve(process.env.BROWSER_TEST_ARTIFACTS || join(REPO, "build", "browser-test"));
const TOTAL_LIMIT_MS = 120_000;
const N_PAGES = 3;
const LIVE_PER_PAGE = 3; // page -> backend before the outage
const AWAY_PER_PAGE = 2; // page -> backend while the backend is away
const TO_PAGE = 2; // backend -> page before the outage
const OUTAGE_MS = 5000;
// The version the published mephisto-task 2.0.4 bundle reports of itself
// (its build baked in 2.0.3; see PROTOCOL.md, "one version warning").
const BUNDLE_REPORTED_VERSION = "2.0.3";

const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1) + " s";
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- state
const S = {
  tmp: null,
  port: 0,
  base: "",
  router: null, // ChildProcess
  routerExit: null,
  routerStopping: false, // set when the test itself signals the router
  chrome: null, // ChildProcess
  browser: null,
  backend: null,
  pages: [], // {i, worker, context, page, agentId, console[], frames[], errors[], sockets[]}
  file: null, // {name, bytes, record}
};
const results = []; // {name, status: "ok"|"FAIL"|"skip", error, secs}
let failed = false;
let finished = false;

function log(msg) {
  process.stdout.write(`[${elapsed()}] ${msg}\n`);
}

async function check(name, fn) {
  if (failed) {
    results.push({ name, status: "skip" });
    log(`skip - ${name}`);
    return;
  }
  const start = Date.now();
  try {
    await fn();
    const secs = (Date.now() - start) / 1000;
    results.push({ name, status: "ok", secs });
    log(`ok   - ${name} (${secs.toFixed(1)} s)`);
  } catch (err) {
    const secs = (Date.now() - start) / 1000;
    failed = true;
    results.push({ name, status: "FAIL", error: err, secs });
    log(`FAIL - ${name} (${secs.toFixed(1)} s)\n       ${String(err && err.stack || err).split("\n").join("\n       ")}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]);
}

// ---------------------------------------------------------------- processes
function freePort() {
  return new Promise((res, rej) => {
    const srv = net.createServer();
    srv.on("error", rej);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

function killGroup(pid, sig) {
  if (!pid) return;
  try {
    process.kill(-pid, sig); // detached: the group id is the pid
  } catch {}
  try {
    process.kill(pid, sig);
  } catch {}
}

/** pids whose process group is pgid (children that left the leader too). */
function groupMembers(pgid) {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(rest[2]) === pgid && rest[0] !== "Z") out.push(Number(d));
    } catch {}
  }
  return out;
}

async function startRouter() {
  S.tmp = fs.mkdtempSync(join(os.tmpdir(), "mr-browser-"));
  fs.mkdirSync(join(S.tmp, "uploads"));
  S.port = await freePort();
  S.base = `http://127.0.0.1:${S.port}`;
  const conf = join(S.tmp, "router.conf");
  fs.writeFileSync(conf, [
    "# written by tests/browser/test/run.mjs",
    "listen_address = 127.0.0.1",
    `port = ${S.port}`,
    "workers = 2",
    `static_dir = ${PAGE_DIR}`,
    `upload_dir = ${join(S.tmp, "uploads")}/`,
    `state_path = ${join(S.tmp, "state.db")}`,
    "log_level = info",
    "shutdown_timeout = 3",
    "",
  ].join("\n"));
  const logFd = fs.openSync(join(S.tmp, "router.log"), "a");
  const env = { ...process.env };
  delete env.PORT;
  S.router = spawn(ROUTER_BIN, ["--config", conf], {
    cwd: S.tmp, env, detached: true, stdio: ["ignore", logFd, logFd],
  });
  fs.closeSync(logFd);
  S.routerExit = new Promise((res) => S.router.once("exit", (code, sig) => res({ code, sig })));
  S.router.once("error", (e) => log(`router spawn error: ${e.message}`));
  let last = "";
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (S.router.exitCode !== null) {
      throw new Error(`router exited with ${S.router.exitCode}:\n${routerLogTail()}`);
    }
    try {
      const r = await fetch(S.base + "/is_alive", { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) return;
      last = `status ${r.status}`;
    } catch (e) {
      last = e.message;
    }
    await sleep(100);
  }
  throw new Error(`router did not answer /is_alive within 10 s (last: ${last})\n${routerLogTail()}`);
}

function routerLogTail(n = 40) {
  try {
    const lines = fs.readFileSync(join(S.tmp, "router.log"), "utf8").trimEnd().split("\n");
    return `---- router log, last ${Math.min(n, lines.length)} of ${lines.length} lines ----\n` +
      lines.slice(-n).join("\n");
  } catch {
    return "(no router log)";
  }
}

function startChromium() {
  const profile = join(S.tmp, "chromium-profile");
  fs.mkdirSync(profile);
  const args = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    `--user-data-dir=${profile}`, "--remote-debugging-port=0", "about:blank",
  ];
  const out = fs.createWriteStream(join(S.tmp, "chromium.log"));
  S.chrome = spawn(CHROMIUM, args, { detached: true, stdio: ["ignore", "pipe", "pipe"] });
  return new Promise((res, rej) => {
    let buf = "";
    const timer = setTimeout(() => rej(new Error(`Chromium printed no DevTools endpoint within 20 s:\n${buf.slice(-2000)}`)), 20_000);
    S.chrome.once("error", (e) => {
      clearTimeout(timer);
      rej(new Error(`cannot start ${CHROMIUM}: ${e.message} (apt-get install chromium)`));
    });
    S.chrome.once("exit", (code, sig) => {
      clearTimeout(timer);
      rej(new Error(`Chromium exited (${code ?? sig}) before its DevTools endpoint:\n${buf.slice(-2000)}`));
    });
    S.chrome.stdout.on("data", (d) => out.write(d));
    S.chrome.stderr.on("data", (d) => {
      out.write(d);
      buf += d.toString();
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        res(m[1]);
      }
    });
  });
}

// ---------------------------------------------------------------- pages
function watchPage(p) {
  const stamp = () => ((Date.now() - t0) / 1000).toFixed(3);
  p.page.on("console", (m) => {
    p.console.push(`${stamp()} ${m.type()}: ${m.text()}`);
    if (m.type() === "error") p.consoleErrors.push(m.text());
  });
  p.page.on("pageerror", (e) => {
    p.console.push(`${stamp()} pageerror: ${e.stack || e.message}`);
    p.errors.push(`uncaught: ${e.message}`);
  });
  p.page.on("requestfailed", (r) => {
    p.console.push(`${stamp()} requestfailed: ${r.method()} ${r.url()} ${r.failure() && r.failure().errorText}`);
    p.errors.push(`request failed: ${r.method()} ${r.url()}`);
  });
  p.page.on("response", (r) => {
    p.console.push(`${stamp()} http ${r.status()} ${r.request().method()} ${r.url()}`);
    if (r.status() >= 400) {
      p.errors.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    }
  });
  p.page.on("websocket", (ws) => {
    const n = p.sockets.length + 1;
    p.sockets.push(ws.url());
    p.frames.push({ t: stamp(), ws: n, dir: "open", text: ws.url() });
    ws.on("framesent", (f) => p.frames.push({ t: stamp(), ws: n, dir: "sent", text: String(f.payload) }));
    ws.on("framereceived", (f) => p.frames.push({ t: stamp(), ws: n, dir: "recv", text: String(f.payload) }));
    ws.on("socketerror", (e) => {
      p.frames.push({ t: stamp(), ws: n, dir: "error", text: String(e) });
      p.errors.push(`WebSocket error: ${e}`);
    });
    ws.on("close", () => p.frames.push({ t: stamp(), ws: n, dir: "close", text: "" }));
  });
}

/** Parsed frames of page p in one direction (unparsable ones skipped). */
function framePackets(p, dir) {
  const out = [];
  for (const f of p.frames) {
    if (f.dir !== dir) continue;
    try {
      out.push(JSON.parse(f.text));
    } catch {}
  }
  return out;
}

async function text(page, sel) {
  return page.evaluate((s) => {
    const e = document.querySelector(s);
    return e ? e.textContent : null;
  }, sel);
}

async function waitText(p, sel, want, ms) {
  try {
    await p.page.waitForFunction(([s, w]) => {
      const e = document.querySelector(s);
      return !!e && e.textContent === w;
    }, [sel, want], { timeout: ms, polling: 100 });
  } catch (err) {
    const got = await text(p.page, sel).catch(() => "?");
    throw new Error(`page ${p.i} (${p.worker}): ${sel} is ${JSON.stringify(got)}, ` +
      `expected ${JSON.stringify(want)} within ${ms} ms`);
  }
}

async function listTexts(page, sel) {
  return page.$$eval(`${sel} li`, (els) => els.map((e) => e.textContent));
}

async function waitList(p, sel, want, ms) {
  try {
    await p.page.waitForFunction(([s, w]) => {
      const got = [...document.querySelectorAll(`${s} li`)].map((e) => e.textContent);
      return JSON.stringify(got) === JSON.stringify(w);
    }, [sel, want], { timeout: ms, polling: 100 });
  } catch (err) {
    const got = await listTexts(p.page, sel).catch(() => "?");
    throw new Error(`page ${p.i} (${p.worker}): ${sel} lists ${JSON.stringify(got)}, ` +
      `expected ${JSON.stringify(want)} within ${ms} ms`);
  }
}

/** Types message into the page and sends it, then waits until mephisto-task
 * has written it to the socket (it shows in #sent). One at a time, as a person
 * types: mephisto-task 2.0.4's send queue is LIFO for packets queued within
 * one 100 ms tick of its sending thread (its PriorityQueue.push compares the
 * element, not the priority, so every push goes to the front). */
async function sendLive(p, message) {
  const before = (await listTexts(p.page, "#sent")).length;
  await p.page.fill("#live-text", message, { timeout: 5000 });
  await p.page.click("#send-live", { timeout: 5000 });
  try {
    await p.page.waitForFunction(([n, m]) => {
      const items = [...document.querySelectorAll("#sent li")].map((e) => e.textContent);
      return items.length > n && items.includes(m);
    }, [before, message], { timeout: 5000, polling: 50 });
  } catch {
    throw new Error(`page ${p.i} (${p.worker}): live update ${message} not sent by mephisto-task within 5 s ` +
      `(#sent: ${JSON.stringify(await listTexts(p.page, "#sent").catch(() => "?"))})`);
  }
}

const liveTexts = (p, tag, n) => Array.from({ length: n }, (_, k) => `${p.worker}-${tag}-${k + 1}`);

// ---------------------------------------------------------------- artifacts
async function keepArtifacts() {
  const dir = join(ARTIFACTS_ROOT, new Date().toISOString().replace(/[:.]/g, "-"));
  fs.mkdirSync(dir, { recursive: true });
  for (const p of S.pages) {
    try {
      await withTimeout(p.page.screenshot({ path: join(dir, `page-${p.i}.png`), fullPage: true, timeout: 5000 }),
        6000, "screenshot");
    } catch (e) {
      p.console.push(`(screenshot failed: ${e.message})`);
    }
    try {
      const html = await withTimeout(p.page.content(), 3000, "page content");
      fs.writeFileSync(join(dir, `page-${p.i}.html`), html);
    } catch {}
    fs.writeFileSync(join(dir, `page-${p.i}-console.log`),
      `worker ${p.worker}, agent ${p.agentId}\n` + p.console.join("\n") + "\n");
    fs.writeFileSync(join(dir, `page-${p.i}-websocket.log`),
      p.frames.map((f) => `${f.t} ws${f.ws} ${f.dir} ${f.text}`).join("\n") + "\n");
  }
  if (S.backend) {
    fs.writeFileSync(join(dir, "backend-packets.jsonl"), S.backend.packets.map((p) =>
      JSON.stringify({ received: p._received / 1000, connection: p._conn, packet: p })).join("\n") + "\n");
    fs.writeFileSync(join(dir, "backend-problems.txt"), S.backend.problems.join("\n") + "\n");
  }
  for (const f of ["router.log", "router.conf", "chromium.log"]) {
    try {
      fs.copyFileSync(join(S.tmp, f), join(dir, f));
    } catch {}
  }
  fs.writeFileSync(join(dir, "results.txt"), results.map((r) =>
    `${r.status} ${r.name}${r.error ? "\n  " + String(r.error.stack || r.error) : ""}`).join("\n") + "\n");
  return dir;
}

// ---------------------------------------------------------------- cleanup
let cleaning = null;
function cleanup() {
  if (!cleaning) cleaning = doCleanup();
  return cleaning;
}

async function doCleanup() {
  if (S.backend) S.backend.stop();
  if (S.browser && S.chrome && S.chrome.exitCode === null && S.chrome.signalCode === null) {
    // ask Chromium to quit (it then ends its renderers itself), then make sure
    const chromeExit = new Promise((res) => S.chrome.once("exit", res));
    try {
      const cdp = await withTimeout(S.browser.newBrowserCDPSession(), 3000, "CDP session");
      cdp.send("Browser.close").catch(() => {});
      await withTimeout(chromeExit, 5000, "Chromium exit");
    } catch {}
  }
  if (S.browser) await withTimeout(S.browser.close(), 3000, "browser.close").catch(() => {});
  if (S.chrome) killGroup(S.chrome.pid, "SIGKILL");
  const survivors = [];
  S.routerStopping = true;
  if (S.router && S.router.exitCode === null && S.router.signalCode === null) {
    try {
      process.kill(S.router.pid, "SIGTERM"); // the supervisor drains its workers
    } catch {}
    const r = await withTimeout(S.routerExit, 8000, "router exit on SIGTERM").catch(() => null);
    if (!r) survivors.push("router did not exit within 8 s of SIGTERM");
  }
  if (S.router) killGroup(S.router.pid, "SIGKILL");
  for (const [what, proc] of [["router", S.router], ["chromium", S.chrome]]) {
    if (!proc) continue;
    const deadline = Date.now() + 3000;
    while (groupMembers(proc.pid).length && Date.now() < deadline) await sleep(50);
    const left = groupMembers(proc.pid);
    if (left.length) {
      left.forEach((pid) => killGroup(pid, "SIGKILL"));
      survivors.push(`${what} processes survived SIGKILL of group ${proc.pid}: ${left.join(" ")}`);
    }
  }
  return survivors;
}

process.on("exit", () => {
  // last resort (an exception escaped): nothing of ours outlives us
  if (S.chrome) killGroup(S.chrome.pid, "SIGKILL");
  if (S.router) killGroup(S.router.pid, "SIGKILL");
});
process.on("unhandledRejection", (err) => {
  // an event handler's failure: it fails the run, and the cleanup still happens
  failed = true;
  results.push({ name: "no unhandled error in the test itself", status: "FAIL", error: err });
  log(`FAIL - unhandled rejection: ${err && err.stack || err}`);
});
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    log(`${sig}: stopping`);
    cleanup().finally(() => process.exit(130));
  });
}

// ---------------------------------------------------------------- the scenario
async function scenario() {
  await check("router, fake backend and headless Chromium start", async () => {
    assert(fs.existsSync(join(PAGE_DIR, "index.html")) && fs.existsSync(join(PAGE_DIR, "bundle.js")),
      `the task page is not built in ${PAGE_DIR}: run \`npm run build\` in tests/browser`);
    assert(fs.existsSync(ROUTER_BIN), `router binary not found: ${ROUTER_BIN} (make)`);
    await startRouter();
    S.backend = new FakeBackend(`ws://127.0.0.1:${S.port}/`, { pollMs: 4000 });
    await S.backend.connect(10_000);
    const endpoint = await startChromium();
    S.browser = await chromium.connectOverCDP(endpoint, { timeout: 15_000 });
    log(`router pid ${S.router.pid} on ${S.base}, Chromium pid ${S.chrome.pid} ` +
      `(${S.browser.version()}), files in ${S.tmp}`);
  });

  await check(`${N_PAGES} pages load the task page and register (task_config.json, /request_agent -> agent_details)`, async () => {
    const b = S.backend;
    await Promise.all(Array.from({ length: N_PAGES }, async (_, i) => {
      const context = await S.browser.newContext();
      const page = await context.newPage();
      const p = { i: i + 1, worker: `worker${i + 1}`, context, page, agentId: null,
        console: [], consoleErrors: [], errors: [], frames: [], sockets: [], wsWorkers: [] };
      S.pages.push(p);
      watchPage(p);
      const cdp = await context.newCDPSession(page);
      await cdp.send("Network.enable");
      cdp.on("Network.webSocketHandshakeResponseReceived", (e) => {
        const h = Object.entries(e.response.headers || {}).find(([k]) => k.toLowerCase() === "x-router-worker");
        p.wsWorkers.push(h ? h[1] : "?");
      });
      page.setDefaultTimeout(10_000);
      await page.goto(`${S.base}/?worker_id=${p.worker}&assignment_id=assignment${p.i}`,
        { timeout: 15_000, waitUntil: "load" });
    }));
    S.pages.sort((x, y) => x.i - y.i);
    for (const p of S.pages) {
      await p.page.waitForFunction(() => {
        const e = document.querySelector("#agent-id");
        return !!e && e.textContent !== "";
      }, null, { timeout: 15_000, polling: 100 }).catch(async () => {
        throw new Error(`page ${p.i}: no agent id within 15 s (loading=${await text(p.page, "#loading")}, ` +
          `blocked=${JSON.stringify(await text(p.page, "#blocked"))})`);
      });
      p.agentId = await text(p.page, "#agent-id");
      const assigned = b.agentsByWorker.get(p.worker);
      assert(p.agentId === assigned, `page ${p.i} shows agent ${p.agentId}, the backend assigned ` +
        `${assigned} to ${p.worker}`);
      await waitText(p, "#question", "2+2?", 5000);
      await waitText(p, "#loading", "false", 5000);
      await waitText(p, "#preview", "false", 5000);
      await waitText(p, "#blocked", "", 1000);
    }
  });

  // mephisto-task 2.0.4 sends `alive` from the socket's onopen through a
  // callback refreshed by a React effect; when the socket opens before React
  // has re-rendered with the agent id that connect(agentId) stored, the alive
  // goes out without a subject_id (dropped by the router as invalid). The page
  // still heartbeats with its agent id, so the router must attach it on a
  // heartbeat once the agent is known (the backend's update_status makes it
  // known). Such pages are noted and held to that path instead.
  await check("each page's WebSocket opens (alive -> update_status \"none\") and its heartbeats are answered", async () => {
    for (const p of S.pages) {
      await waitText(p, "#connection-status", "connected", 10_000);
    }
    log(`router worker slots: backend ${S.backend.workerSlots.join(",")}; ` +
      S.pages.map((p) => `page ${p.i} (agent ${p.agentId}) ${p.wsWorkers.join(",") || "?"}`).join(", "));
    const deadline = Date.now() + 8000;
    for (const p of S.pages) {
      const alive = framePackets(p, "sent").filter((x) => x.packet_type === "alive");
      assert(alive.length === 1, `page ${p.i}: sent ${alive.length} alive packets (${short(alive)})`);
      if (alive[0].subject_id === undefined) {
        p.aliveRace = true;
        log(`page ${p.i}: mephisto-task sent its alive without subject_id (its onopen race); ` +
          "the router must attach it on a heartbeat");
      } else {
        assert(alive[0].subject_id === p.agentId, `page ${p.i}: alive for ${alive[0].subject_id}, agent is ${p.agentId}`);
      }
      for (;;) {
        const hb = framePackets(p, "recv").filter((x) => x.packet_type === "heartbeat");
        const st = framePackets(p, "recv").filter((x) => x.packet_type === "update_status");
        if (hb.length && (st.length || p.aliveRace)) {
          assert(typeof hb[0].data.last_mephisto_ping === "number",
            `page ${p.i}: heartbeat answer without a numeric last_mephisto_ping: ${short(hb[0])}`);
          if (!p.aliveRace) {
            assert(st[0].subject_id === p.agentId && st[0].data.status === "none",
              `page ${p.i}: first update_status is ${short(st[0])}, expected status "none" for ${p.agentId}`);
          }
          break;
        }
        assert(Date.now() < deadline, `page ${p.i}: within 8 s of connecting, ${hb.length} heartbeat ` +
          `answers and ${st.length} update_status packets; frames: ${p.frames.length}`);
        await sleep(100);
      }
    }
  });

  await check('the backend\'s update_status "in task" reaches every page', async () => {
    for (const p of S.pages) S.backend.setStatus(p.agentId, "in task");
    // a page whose alive was lost is attached at its next heartbeat (every 6 s)
    for (const p of S.pages) await waitText(p, "#agent-status", "in task", p.aliveRace ? 12_000 : 5000);
  });

  await check(`live updates page -> backend: ${LIVE_PER_PAGE} typed in each page arrive as mephisto_bound_live_update`, async () => {
    await Promise.all(S.pages.map(async (p) => {
      for (const m of liveTexts(p, "live", LIVE_PER_PAGE)) await sendLive(p, m);
      await waitList(p, "#sent", liveTexts(p, "live", LIVE_PER_PAGE), 5000);
    }));
    const isLive = (x) => x.packet_type === "mephisto_bound_live_update";
    await S.backend.waitN(isLive, N_PAGES * LIVE_PER_PAGE, 10_000, "mephisto_bound_live_update");
    for (const p of S.pages) {
      const got = S.backend.received((x) => isLive(x) && x.subject_id === p.agentId).map((x) => x.data.text);
      assert(JSON.stringify(got) === JSON.stringify(liveTexts(p, "live", LIVE_PER_PAGE)),
        `backend got ${JSON.stringify(got)} from agent ${p.agentId}, expected ` +
        `${JSON.stringify(liveTexts(p, "live", LIVE_PER_PAGE))}`);
    }
  });

  const toPage = (p, tag, n) => Array.from({ length: n }, (_, k) => `to-${p.worker}-${tag}-${k + 1}`);
  const sendToPage = (p, t) => S.backend.send(backendPacket("client_bound_live_update", p.agentId,
    { update_id: randomUUID(), text: t }));

  await check(`live updates backend -> page: ${TO_PAGE} client_bound_live_update per page are shown in it`, async () => {
    for (const p of S.pages) toPage(p, "live", TO_PAGE).forEach((t) => sendToPage(p, t));
    for (const p of S.pages) await waitList(p, "#received", toPage(p, "live", TO_PAGE), 5000);
  });

  // The last page submits while the backend is away; the others after it is back.
  const awaySubmitter = () => S.pages[N_PAGES - 1];
  const expectReceived = (p) => [...toPage(p, "live", TO_PAGE), ...(p === awaySubmitter() ? [] : [`to-${p.worker}-after-1`])];
  const expectSent = (p) => [...liveTexts(p, "live", LIVE_PER_PAGE), ...liveTexts(p, "away", AWAY_PER_PAGE)];
  const isLive = (x) => x.packet_type === "mephisto_bound_live_update";
  const isSubmit = (x) => x.packet_type === "submit_unit";

  async function waitProviderSubmitted(p, ms) {
    await p.page.waitForSelector("body[data-provider-submitted]", { state: "attached", timeout: ms })
      .catch(() => {
        throw new Error(`page ${p.i}: handleSubmit's POST /submit_task did not complete within ${ms} ms ` +
          `(handleSubmitToProvider not called)`);
      });
  }

  await check(`backend away ${OUTAGE_MS / 1000} s: pages stay in task; their live updates and a submission ` +
    `made meanwhile arrive once it is back, in order`, async () => {
    const q = awaySubmitter();
    const before = S.backend.received(isLive).length;
    const away = Date.now();
    await withTimeout(S.backend.goAway(), 5000, "backend socket close");
    log("backend gone");
    await Promise.all(S.pages.map(async (p) => {
      for (const m of liveTexts(p, "away", AWAY_PER_PAGE)) await sendLive(p, m);
      await waitList(p, "#sent", expectSent(p), 5000);
    }));
    await q.page.click("#submit"); // mephisto-task's handleSubmit: JSON POST /submit_task
    await waitProviderSubmitted(q, Math.max(1000, OUTAGE_MS - (Date.now() - away) - 500));
    log(`page ${q.i} submitted while the backend is away`);
    const rest = OUTAGE_MS - (Date.now() - away);
    if (rest > 0) await sleep(rest);
    for (const p of S.pages) {
      await waitText(p, "#connection-status", "connected", 1000);
      await waitText(p, "#agent-status", "in task", 1000);
    }
    await S.backend.connect(10_000);
    log(`backend back after ${((Date.now() - away) / 1000).toFixed(1)} s`);
    await S.backend.waitN(isLive, before + N_PAGES * AWAY_PER_PAGE, 10_000,
      "mephisto_bound_live_update (including those sent while away)");
    const qSubmit = await S.backend.waitFor((x) => isSubmit(x) && x.subject_id === q.agentId, 10_000,
      `submit_unit of agent ${q.agentId} (submitted while away)`);
    for (const p of S.pages) {
      const got = S.backend.received((x) => isLive(x) && x.subject_id === p.agentId).map((x) => x.data.text);
      assert(JSON.stringify(got) === JSON.stringify(expectSent(p)),
        `backend got ${JSON.stringify(got)} from agent ${p.agentId}, expected ${JSON.stringify(expectSent(p))}`);
      const late = S.backend.received((x) => isLive(x) && x.subject_id === p.agentId && x.data.text.includes("-away-"));
      assert(late.every((x) => x._conn === 2), `agent ${p.agentId}: an update sent while away came on connection 1?`);
    }
    const lastAway = S.backend.received((x) => isLive(x) && x.subject_id === q.agentId).pop();
    assert(qSubmit._conn === 2 && S.backend.packets.indexOf(qSubmit) > S.backend.packets.indexOf(lastAway),
      `agent ${q.agentId}: its submit_unit (connection ${qSubmit._conn}) did not follow its live updates`);
    const statuses = await S.backend.statuses(5000);
    for (const p of S.pages.filter((x) => x !== q)) {
      assert(statuses[p.agentId] === "in task",
        `return_statuses after the outage: agent ${p.agentId} is ${JSON.stringify(statuses[p.agentId])}, ` +
        `expected "in task" (all: ${short(statuses)})`);
    }
    for (const p of S.pages.filter((x) => x !== q)) sendToPage(p, `to-${p.worker}-after-1`);
    for (const p of S.pages) {
      await waitList(p, "#received", expectReceived(p), 5000);
      await waitText(p, "#agent-status", "in task", 1000);
      await waitText(p, "#connection-status", "connected", 1000);
    }
  });

  await check("submissions: page 1 multipart with a file (postData + FormData), the others with " +
    `mephisto-task's handleSubmit; all ${N_PAGES} arrive as submit_unit`, async () => {
    const bytes = Buffer.concat([Buffer.from("\x89PNG\r\n\x1a\n", "binary"), randomBytes(64 * 1024),
      Buffer.from([0, 0, 0xff, 0xfe, 0x0d, 0x0a, 0x2d, 0x2d])]);
    S.file = { name: "answer.png", bytes };
    const first = S.pages[0];
    const others = S.pages.slice(1).filter((p) => p !== awaySubmitter());
    await first.page.setInputFiles("#upload", { name: S.file.name, mimeType: "image/png", buffer: bytes });
    await first.page.click("#submit");
    for (const p of others) await p.page.click("#submit");
    await waitText(first, "#submit-state", "Submitted!", 10_000);
    for (const p of others) await waitProviderSubmitted(p, 10_000);
    await S.backend.waitN(isSubmit, N_PAGES, 10_000, "submit_unit");
    for (const p of S.pages) {
      const subs = S.backend.received((x) => isSubmit(x) && x.subject_id === p.agentId);
      assert(subs.length === 1, `agent ${p.agentId}: ${subs.length} submit_unit packets`);
      const d = subs[0].data;
      assert(d.answer === "4" && JSON.stringify(d.sent) === JSON.stringify(expectSent(p)) &&
        JSON.stringify(d.received) === JSON.stringify(expectReceived(p)),
        `agent ${p.agentId}: submit_unit data is ${short(d, 600)}`);
      if (p === first) {
        assert(Array.isArray(d.files) && d.files.length === 1, `multipart submit_unit files: ${short(d.files)}`);
        const f = d.files[0];
        assert(f.fieldname === "upload" && f.originalname === S.file.name && f.size === bytes.length &&
          f.mimetype === "image/png" && typeof f.filename === "string" && /^[A-Za-z0-9._-]+$/.test(f.filename) &&
          f.filename !== S.file.name,
          `file record ${short(f)} (expected fieldname upload, originalname ${S.file.name}, ` +
          `size ${bytes.length}, mimetype image/png, a stored name of the router's)`);
        const byField = d.filesByFields && d.filesByFields.upload;
        assert(Array.isArray(byField) && byField.length === 1 && byField[0].filename === f.filename &&
          !("fieldname" in byField[0]), `filesByFields: ${short(d.filesByFields)}`);
        S.file.record = f;
      } else {
        assert(typeof subs[0].client_timestamp === "number",
          `agent ${p.agentId}: JSON submit_unit client_timestamp ${subs[0].client_timestamp}`);
        assert(!("files" in d), `agent ${p.agentId}: JSON submission has files? ${short(d)}`);
      }
    }
  });

  await check("GET /download_file/<stored name> returns the uploaded file byte for byte", async () => {
    assert(S.file && S.file.record, "no file record from the submission");
    const r = await fetch(`${S.base}/download_file/${encodeURIComponent(S.file.record.filename)}`,
      { signal: AbortSignal.timeout(5000) });
    assert(r.status === 200, `download_file answered ${r.status}`);
    const got = Buffer.from(await r.arrayBuffer());
    assert(got.equals(S.file.bytes), `downloaded ${got.length} bytes, uploaded ${S.file.bytes.length}; ` +
      `first difference at byte ${[...got].findIndex((v, k) => v !== S.file.bytes[k])}`);
  });

  await check("every packet reached the backend exactly once, well formed", async () => {
    await sleep(1500); // room for a late duplicate to show up
    const b = S.backend;
    assert(b.problems.length === 0, `protocol problems:\n  ${b.problems.slice(0, 20).join("\n  ")}`);
    const byType = {};
    for (const x of b.packets) byType[x.packet_type] = (byType[x.packet_type] || 0) + 1;
    const allowed = ["register_agent", "mephisto_bound_live_update", "submit_unit", "log_error", "return_statuses"];
    const unexpected = Object.keys(byType).filter((t) => !allowed.includes(t));
    assert(unexpected.length === 0, `unexpected packet types at the backend: ${unexpected.join(", ")} (${short(byType)})`);

    const regs = b.received((x) => x.packet_type === "register_agent");
    assert(regs.length === N_PAGES, `${regs.length} register_agent packets for ${N_PAGES} pages`);
    for (const p of S.pages) {
      const mine = regs.filter((x) => x.data.provider_data && x.data.provider_data.worker_name === p.worker);
      assert(mine.length === 1, `${mine.length} register_agent for ${p.worker}`);
      assert(mine[0].subject_id === mine[0].data.request_id, `register_agent subject_id is not its request_id`);
    }
    assert(new Set(regs.map((x) => x.data.request_id)).size === N_PAGES, "request ids are not distinct");

    const lives = b.received((x) => x.packet_type === "mephisto_bound_live_update");
    const ids = lives.map((x) => x.data.update_id);
    const dupIds = ids.filter((v, k) => ids.indexOf(v) !== k);
    assert(dupIds.length === 0, `live updates delivered more than once: update_ids ${dupIds.join(", ")}`);
    const pageIds = S.pages.flatMap((p) => framePackets(p, "sent")
      .filter((x) => x.packet_type === "mephisto_bound_live_update").map((x) => x.data.update_id));
    assert(pageIds.length === N_PAGES * (LIVE_PER_PAGE + AWAY_PER_PAGE),
      `the pages sent ${pageIds.length} live updates, expected ${N_PAGES * (LIVE_PER_PAGE + AWAY_PER_PAGE)}`);
    assert(JSON.stringify([...ids].sort()) === JSON.stringify([...pageIds].sort()),
      `update_ids at the backend differ from those the pages sent:\n  backend ${ids.join(",")}\n  pages   ${pageIds.join(",")}`);

    const subs = b.received((x) => x.packet_type === "submit_unit");
    assert(subs.length === N_PAGES, `${subs.length} submit_unit packets for ${N_PAGES} submissions`);

    const errs = b.received((x) => x.packet_type === "log_error");
    assert(errs.length === 1 && errs[0].subject_id === "mephisto" &&
      errs[0].data.error_type === "version-mismatch" &&
      String(errs[0].data.text).includes(BUNDLE_REPORTED_VERSION),
      `expected one version-mismatch log_error (the bundle reports ${BUNDLE_REPORTED_VERSION}) for ` +
      `${N_PAGES} page loads, got ${errs.length}: ${short(errs)}`);
  });

  await check("every packet reached the pages exactly once, well formed; no page errors", async () => {
    for (const p of S.pages) {
      const probs = [];
      for (const f of p.frames.filter((f) => f.dir === "recv")) {
        probs.push(...checkFrame(f.text, `page ${p.i}`)[1]);
      }
      assert(probs.length === 0, `frames to page ${p.i}:\n  ${probs.slice(0, 10).join("\n  ")}`);
      const live = framePackets(p, "recv").filter((x) => x.packet_type === "client_bound_live_update");
      const want = expectReceived(p).length;
      assert(live.length === want && new Set(live.map((x) => x.data.update_id)).size === want,
        `page ${p.i} received ${live.length} client_bound_live_update frames ` +
        `(${live.map((x) => x.data.text).join(",")}), expected ${want}, each once`);
      assert(live.every((x) => x.subject_id === p.agentId), `page ${p.i} got another agent's live update`);
      const st = framePackets(p, "recv").filter((x) => x.packet_type === "update_status").map((x) => x.data.status);
      const wantSt = p.aliveRace ? ["in task"] : ["none", "in task"];
      assert(JSON.stringify(st) === JSON.stringify(wantSt),
        `page ${p.i} got update_status ${JSON.stringify(st)}, expected ${JSON.stringify(wantSt)}`);
      // every heartbeat sent more than a second ago was answered (on the same socket)
      const now = (Date.now() - t0) / 1000;
      const hbSent = p.frames.filter((f) => f.dir === "sent" && f.text.includes('"heartbeat"') &&
        Number(f.t) < now - 1).length;
      const hbAnswers = framePackets(p, "recv").filter((x) => x.packet_type === "heartbeat").length;
      assert(hbSent >= 1 && hbAnswers >= hbSent,
        `page ${p.i}: ${hbAnswers} heartbeat answers for ${hbSent} heartbeats sent`);
      assert(p.sockets.length === 1, `page ${p.i} opened ${p.sockets.length} WebSockets: ${p.sockets.join(" ")}`);
      const statuses = await text(p.page, "#statuses");
      assert(!/disconnect/.test(statuses), `page ${p.i} saw statuses ${statuses}`);
      assert(p.errors.length === 0, `page ${p.i}: ${p.errors.join("; ")}`);
      assert(p.consoleErrors.length === 0, `page ${p.i} console errors: ${p.consoleErrors.join(" | ")}`);
    }
  });

  await check("the router stops cleanly on SIGTERM (exit 0) and logged no error", async () => {
    S.routerStopping = true;
    process.kill(S.router.pid, "SIGTERM");
    const r = await withTimeout(S.routerExit, 8000, "router exit after SIGTERM");
    assert(r.code === 0, `router exit ${r.code ?? r.sig} after SIGTERM\n${routerLogTail()}`);
    const lines = fs.readFileSync(join(S.tmp, "router.log"), "utf8").split("\n");
    // the one warning expected: the alive without subject_id of a page that hit mephisto-task's race
    const races = S.pages.filter((p) => p.aliveRace).length;
    let expected = 0;
    const bad = lines.filter((l) => {
      if (/Sanitizer|runtime error:/.test(l)) return true;
      if (!/^\S+ (error|warn) /.test(l)) return false;
      if (/dropped an invalid packet \(subject_id missing/.test(l) && expected < races) {
        expected++;
        return false;
      }
      return true;
    });
    assert(bad.length === 0, `router log:\n  ${bad.slice(0, 20).join("\n  ")}`);
  });
}

// ---------------------------------------------------------------- main
async function main() {
  log(`router ${ROUTER_BIN}, page ${PAGE_DIR}, browser ${CHROMIUM}`);
  const watchdog = setTimeout(async () => {
    if (finished) return;
    failed = true;
    results.push({ name: `the whole run within ${TOTAL_LIMIT_MS / 1000} s`, status: "FAIL",
      error: new Error("time limit reached") });
    log(`FAIL - time limit of ${TOTAL_LIMIT_MS / 1000} s reached`);
    await finish();
    process.exit(1);
  }, TOTAL_LIMIT_MS);
  try {
    await scenario();
  } catch (err) {
    failed = true;
    results.push({ name: "scenario", status: "FAIL", error: err });
    log(`FAIL - scenario: ${err && err.stack || err}`);
  }
  clearTimeout(watchdog);
  const code = await finish();
  process.exit(code);
}

let finishing = null;
function finish() {
  if (!finishing) finishing = doFinish();
  return finishing;
}

async function doFinish() {
  finished = true;
  if (S.router && !S.routerStopping && (S.router.exitCode !== null || S.router.signalCode !== null)) {
    failed = true;
    results.push({ name: "the router runs until the test stops it", status: "FAIL",
      error: new Error(`it exited by itself (${S.router.exitCode ?? S.router.signalCode})`) });
    log(`FAIL - the router exited by itself (${S.router.exitCode ?? S.router.signalCode})`);
  }
  let artifacts = null;
  if (failed) {
    try {
      artifacts = await withTimeout(keepArtifacts(), 30_000, "keeping artifacts");
    } catch (e) {
      log(`could not keep artifacts: ${e.message}`);
    }
  }
  const survivors = await cleanup();
  if (survivors.length) {
    results.push({ name: "the router, the backend and Chromium end with the test", status: "FAIL",
      error: new Error(survivors.join("; ")) });
    log(`FAIL - ${survivors.join("; ")}`);
  }
  if (artifacts) {
    for (const f of ["router.log", "chromium.log"]) {
      try {
        fs.copyFileSync(join(S.tmp, f), join(artifacts, f)); // the full logs, after shutdown
      } catch {}
    }
    log(`screenshots, consoles, WebSocket frames, backend packets and logs kept in ${artifacts}`);
  }
  if (S.tmp) fs.rmSync(S.tmp, { recursive: true, force: true });
  const n = (s) => results.filter((r) => r.status === s).length;
  log(`run time ${elapsed()}`);
  const skipped = n("skip");
  process.stdout.write(`${n("ok")} passed, ${n("FAIL")} failed${skipped ? `, ${skipped} skipped` : ""}\n`);
  return n("FAIL") || !n("ok") ? 1 : 0;
}

main();
