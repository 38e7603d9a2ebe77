// A fake Mephisto backend for the browser test: a WebSocket client of the
// router (the `ws` package; permessage-deflate offered and frames capped at
// 1 MiB, like the real backend's Python `websockets` defaults), shaped like
// tests/integration/mephisto_fakes.py's FakeBackend: `alive` as "mephisto"
// first, `request_statuses` every pollMs, `agent_details` (with request_id
// and a fresh agent id) in answer to `register_agent`. Every packet it
// receives is checked the way the backend parses packets (packet_type,
// subject_id and a data object required, no duplicated key) plus the
// router's promise of router_outgoing_timestamp in seconds; violations are
// collected in .problems.
import WebSocket from "ws";

export const MEPHISTO = "mephisto";
export const BACKEND_MAX_SIZE = 1 << 20;

/** A packet as Mephisto's Packet.to_sendable_dict() makes it. */
export function backendPacket(packetType, subjectId, data = {}, extra = {}) {
  return {
    packet_type: packetType,
    subject_id: subjectId,
    data,
    client_timestamp: null,
    router_incoming_timestamp: null,
    router_outgoing_timestamp: null,
    server_timestamp: Date.now() / 1000,
    ...extra,
  };
}

/** The top-level keys of a JSON object text, in order, duplicates kept. */
export function topLevelKeys(text) {
  const keys = [];
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      if (depth === 1 && expectKey) {
        keys.push(JSON.parse(text.slice(i, j + 1)));
        expectKey = false;
      }
      i = j;
    } else if (c === "{" || c === "[") {
      depth++;
      if (depth === 1 && c === "{") expectKey = true;
    } else if (c === "}" || c === "]") {
      depth--;
    } else if (c === "," && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

export function isSeconds(v) {
  return typeof v === "number" && Number.isFinite(v) && Math.abs(v - Date.now() / 1000) < 3600;
}

export function short(x, n = 300) {
  const s = typeof x === "string" ? x : String(JSON.stringify(x));
  return s.length <= n ? s : s.slice(0, n) + `...(${s.length} chars)`;
}

/** What is wrong with one frame text received from the router by `where`;
 * returns [packet or null, problems]. */
export function checkFrame(text, where) {
  let p;
  try {
    p = JSON.parse(text);
  } catch (e) {
    return [null, [`${where}: frame is not JSON: ${short(text)}`]];
  }
  if (p === null || typeof p !== "object" || Array.isArray(p)) {
    return [null, [`${where}: not a JSON object: ${short(text)}`]];
  }
  const out = [];
  if (typeof p.packet_type !== "string") out.push(`${where}: packet_type missing or not a string`);
  if (typeof p.subject_id !== "string") out.push(`${where}: subject_id missing or not a string`);
  if (p.data === null || typeof p.data !== "object" || Array.isArray(p.data)) {
    out.push(`${where}: data missing or not an object`);
  }
  if (!isSeconds(p.router_outgoing_timestamp)) {
    out.push(`${where}: router_outgoing_timestamp missing or not seconds: ${p.router_outgoing_timestamp}`);
  }
  const keys = topLevelKeys(text);
  const dups = keys.filter((k, i) => keys.indexOf(k) !== i);
  if (dups.length) out.push(`${where}: duplicated keys ${dups.join(",")}`);
  if (out.length) out[out.length - 1] += `  (packet: ${short(text)})`;
  return [p, out];
}

export class FakeBackend {
  constructor(url, { pollMs = 4000, name = "backend" } = {}) {
    this.url = url;
    this.pollMs = pollMs;
    this.name = name;
    this.packets = []; // every packet received, in order, with _received and _conn
    this.problems = [];
    this.sentDetails = new Map(); // request_id -> agent_details sent
    this.agentsByWorker = new Map(); // provider worker_name -> agent id
    this.connections = 0;
    this.workerSlots = []; // X-Router-Worker of each connection
    this.ws = null;
    this.poller = null;
    this.nextAgent = 101;
    this.waiters = new Set();
  }

  connect(timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, {
        maxPayload: BACKEND_MAX_SIZE,
        perMessageDeflate: true,
        handshakeTimeout: timeoutMs,
      });
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error(`${this.name}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      ws.on("upgrade", (res) => this.workerSlots.push(res.headers["x-router-worker"] || "?"));
      ws.on("open", () => {
        clearTimeout(timer);
        this.ws = ws;
        this.connections++;
        const conn = this.connections;
        ws.on("message", (data, isBinary) => this._onMessage(data, isBinary, conn));
        ws.send(JSON.stringify(backendPacket("alive", MEPHISTO)));
        this.poller = setInterval(() => {
          if (ws.readyState === WebSocket.OPEN) {
            ws.send(JSON.stringify(backendPacket("request_statuses", MEPHISTO)));
          }
        }, this.pollMs);
        resolve(this);
      });
      ws.on("error", (err) => {
        clearTimeout(timer);
        if (this.ws !== ws) reject(err);
        else this.problems.push(`${this.name}: socket error ${err.message}`);
      });
      ws.on("close", (code) => {
        if (this.ws === ws && !this.goingAway) {
          this.problems.push(`${this.name}: the router closed the channel (code ${code})`);
        }
      });
    });
  }

  /** The backend process vanishes: the TCP connection drops without a
   * closing handshake and the polls stop. Resolves when the socket is closed. */
  goAway() {
    const ws = this.ws;
    clearInterval(this.poller);
    this.poller = null;
    if (!ws) return Promise.resolve();
    this.goingAway = true;
    return new Promise((resolve) => {
      ws.once("close", () => {
        this.goingAway = false;
        this.ws = null;
        resolve();
      });
      ws.terminate();
    });
  }

  _onMessage(data, isBinary, conn) {
    if (isBinary) {
      this.problems.push(`${this.name}: binary frame from the router (${data.length} bytes)`);
      return;
    }
    const [p, probs] = checkFrame(data.toString("utf8"), this.name);
    this.problems.push(...probs);
    if (!p) return;
    Object.defineProperty(p, "_received", { value: Date.now(), enumerable: false });
    Object.defineProperty(p, "_conn", { value: conn, enumerable: false });
    this.packets.push(p);
    if (p.packet_type === "register_agent") this._answerRegister(p);
    for (const w of [...this.waiters]) w();
  }

  _answerRegister(p) {
    const data = p.data || {};
    const rid = typeof data.request_id === "string" ? data.request_id : p.subject_id;
    const worker = data.provider_data && data.provider_data.worker_name;
    const agentId = String(this.nextAgent++);
    if (typeof worker === "string") this.agentsByWorker.set(worker, agentId);
    const det = backendPacket("agent_details", rid, {
      request_id: rid,
      agent_id: agentId,
      worker_id: "worker-" + worker,
      init_task_data: { question: "2+2?" },
    });
    this.sentDetails.set(rid, det);
    this.send(det);
  }

  send(packet) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new Error(`${this.name}: send while not connected`);
    }
    this.ws.send(typeof packet === "string" ? packet : JSON.stringify(packet));
  }

  received(pred = () => true) {
    return this.packets.filter(pred);
  }

  /** Resolves with the packets matching pred once there are n of them;
   * rejects after timeoutMs naming what was seen. */
  waitN(pred, n, timeoutMs, what) {
    return new Promise((resolve, reject) => {
      const check = () => {
        const got = this.packets.filter(pred);
        if (got.length >= n) {
          this.waiters.delete(check);
          clearTimeout(timer);
          resolve(got);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        const got = this.packets.filter(pred).length;
        const last = this.packets.slice(-8).map((p) => short(p, 160));
        reject(new Error(`${this.name}: ${got} of ${n} ${what} within ${timeoutMs} ms; ` +
          `connected=${!!this.ws}; last packets: ${last.join(" | ")}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  async waitFor(pred, timeoutMs, what) {
    return (await this.waitN(pred, 1, timeoutMs, what))[0];
  }

  /** request_statuses now; resolves with its return_statuses' data. */
  async statuses(timeoutMs = 5000) {
    const req = backendPacket("request_statuses", MEPHISTO);
    const st = req.server_timestamp;
    this.send(req);
    const got = await this.waitFor(
      (p) => p.packet_type === "return_statuses" && typeof p.client_timestamp === "number" &&
        Math.abs(p.client_timestamp - st) < 1e-3,
      timeoutMs, "return_statuses");
    return got.data;
  }

  setStatus(agentId, status) {
    this.send(backendPacket("update_status", agentId, { status }));
  }

  stop() {
    clearInterval(this.poller);
    this.poller = null;
    if (this.ws) {
      this.goingAway = true;
      this.ws.terminate();
      this.ws = null;
    }
    for (const w of this.waiters) this.waiters.delete(w);
  }
}
