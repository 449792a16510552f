/**
 * The master role: one broadcast transfer of an image to a set of nodes.
 *
 *   announce (repeated with back-off until every target joined, or drops it: ETIMEDOUT); a node that
 *     already runs the announced image answers CURRENT and takes no part; when no node needs the
 *     image, no data moves at all (FINISH only)
 *   data pass: SYNC per 256-chunk block + one data frame per chunk, to all at once; windowed —
 *     window k is acknowledged by one node (the k-th in rotation), so flow-control frames do not grow
 *     with the number of nodes; at most `inflight` windows are unacknowledged; bursts are paced
 *   report rounds: REPORT → each node answers with its verdict or a missing-chunk bitmap; the master
 *     repairs exactly the union of what was reported; silent nodes are retried with back-off and
 *     dropped with ETIMEDOUT after `retries`
 *   FINISH
 *
 * Nothing here trusts a listener's numbers: reports are clipped to the image, verdicts must name
 * this session, and frames of other masters are only counted.
 */
import { createHash, randomInt } from 'node:crypto';
import { crc32 } from 'node:zlib';
import type { CanBus } from './bus.js';
import type { CanFrame } from './frame.js';
import { BROADCAST, classifyId, dataId, DEFAULT_ID_PLAN, idPlanProblem, nodeProblem, ProvOp, provId, type CanIdPlan } from './ids.js';
import {
  BLOCK_CHUNKS,
  CtrlKind,
  decodeAck,
  decodeJoin,
  decodeJoinX,
  decodeMissing,
  decodeVerdict,
  encodeAnnounceParts,
  encodeCtrl,
  encodeSync,
  JoinFlag,
  shortSha,
  statusName,
  VERDICT_REASONS,
  VerdictFlag,
  whereName,
  type Announce,
  type AnnounceStream,
} from './messages.js';

export interface MasterOptions {
  bus: CanBus;
  image: Uint8Array;
  nodes: number[];
  /** CAN FD: 64-byte chunks (the bus must allow FD). */
  fd?: boolean;
  plan?: CanIdPlan;
  /** 1..255; random when absent. */
  session?: number;
  /** Data frames per flow-control window (default 64 classic, 96 FD). */
  window?: number;
  /** Unacknowledged windows allowed in flight (default 2). */
  inflight?: number;
  /** Frames sent per event-loop turn before yielding (default 32). */
  burst?: number;
  /** Base timeout for joins, acks and reports; doubled on each retry (default 200 ms). */
  timeoutMs?: number;
  /** Retries before a node is dropped with ETIMEDOUT (default 5). */
  retries?: number;
  /**
   * How long the announce waits for nodes that never JOIN before they are given up (ETIMEDOUT
   * `no_join`). Default: 3000 ms when neither `timeoutMs` nor `retries` is given, so a wrong node id
   * or a dead bus says so within seconds; with either given, their back-off alone decides (a slow
   * rig asks for longer on purpose).
   */
  joinBudgetMs?: number;
  /** Report rounds before the remaining nodes are given up (default 64). */
  maxRounds?: number;
  /** Send the image even to nodes that already run it (ANNOUNCE flag FORCE). */
  force?: boolean;
  /**
   * Send this encoded stream of `image` (issue 25): a version 2 announce names the encoding, and the
   * chunks carry the stream. The announce's size, CRC-32 and SHA-256 stay the image's.
   */
  stream?: { encoding: AnnounceStream['encoding']; bytes: Uint8Array; baseSha256?: Uint8Array };
  /**
   * Only ask (ANNOUNCE flag PROBE): which nodes run the image already (CURRENT), and what the others run
   * and decode (`MasterResult.probes`); no data moves, the session ends with FINISH.
   */
  probe?: boolean;
  onProgress?: (p: MasterProgress) => void;
}

/** READY (installed), UPDATED (replaced the image it ran), CURRENT (it ran this image already), or an error code. */
export type NodeStatus = 'READY' | 'UPDATED' | 'CURRENT' | string;

/** The statuses that count as success. */
export const OK_STATUSES: ReadonlySet<string> = new Set(['READY', 'UPDATED', 'CURRENT']);

export interface NodeVerdict {
  node: number;
  status: NodeStatus;
  where: string;
  /** Why the master gave up on the node, when it did. */
  reason?: string;
  /** CRC-32 of the image the node verified (READY and UPDATED). */
  crc32?: number;
  /** Short SHA-256 (6 hex digits) of the image the node ran before (UPDATED, CURRENT; READY when it ran another image). */
  from?: string;
  /** Short SHA-256 of the image it runs now (READY, UPDATED, CURRENT). */
  to?: string;
}

export interface MasterProgress {
  phase: 'announce' | 'data' | 'repair' | 'done';
  sent: number;
  total: number;
  joined: number[];
  verdicts: NodeVerdict[];
  round: number;
}

export interface MasterStats {
  session: number;
  chunks: number;
  chunkSize: number;
  /** Frames this master put on the bus, by kind. */
  sent: { announce: number; sync: number; data: number; repair: number; ctrl: number };
  /** Frames heard from listeners of this session, by kind. */
  heard: { join: number; ack: number; missing: number; verdict: number };
  /** Bytes of image carried by data and repair frames. */
  payloadBytes: number;
  /** Data frames in the frame format (8 classic, 64 FD) × frames sent + heard: the efficiency denominator. */
  frameBytes: number;
  rounds: number;
  /** STATUS polls sent during the data pass (no ACK due, or none arrived). */
  polls: number;
  repairedChunks: number;
  foreignFrames: number;
  /** How long the announce was scheduled to wait for joins, in all (the back-off, capped by joinBudgetMs). */
  joinWaitMs: number;
  ms: number;
}

export interface MasterResult {
  ok: boolean;
  verdicts: NodeVerdict[];
  stats: MasterStats;
  /** A probe's answers: per node that answered JOINED, what it runs and decodes. */
  probes: Map<number, ProbeAnswer>;
}

/** What a node said to a probe (JOIN + JOINX). */
export interface ProbeAnswer {
  /** Hex prefix of the SHA-256 of the image it runs: 14 digits with JOINX, 6 without; null: it runs none. */
  running: string | null;
  /** What it decodes (JOINX), or null: raw only. */
  codec: { deflate: boolean; patch: boolean; maxWindowBits: number; ramBytes: number } | null;
}

interface NodeState {
  joined: boolean;
  /** JOINX: caps and bytes 3..6 of the running SHA-256. */
  joinx: { deflate: boolean; patch: boolean; maxWindowBits: number; ramBytes: number; tail: string } | null;
  /** Short SHA-256 of the image the node said it runs (JOIN's RUNNING field). */
  running: string | null;
  verdict: NodeVerdict | null;
  silent: number;
  answered: boolean;
  reportDone: boolean;
  /** The instance tag of the node's last JOIN (0: a listener that sends none), and the announce it answered. */
  instance: number | null;
  instanceEpoch: number;
}

/** A node that has not joined after this long (at default timeouts) is given up: see MasterOptions.joinBudgetMs. */
export const DEFAULT_JOIN_BUDGET_MS = 3000;

const yieldTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

export class CanMaster {
  private readonly plan: CanIdPlan;
  private readonly bus: CanBus;
  private readonly image: Uint8Array;
  /** What the chunks carry: the encoded stream, or the image. */
  private readonly payload: Uint8Array;
  private readonly fd: boolean;
  private readonly chunkSize: number;
  private readonly nChunks: number;
  private readonly window: number;
  private readonly inflight: number;
  private readonly burst: number;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly maxRounds: number;
  private readonly targets: number[];
  private readonly announce: Announce;
  private readonly shortSha: string;
  private readonly blockCrcs: number[] = [];
  private readonly nodes = new Map<number, NodeState>();
  private readonly repairs = new Set<number>();
  private released = 0; // chunks acknowledged by some node (cumulative)
  private position = 0; // next chunk of the data pass
  private polledAt = 0; // chunks sent when the last STATUS poll went out
  /** Announces sent so far: which announce a JOIN answers (see the instance tags in onFrame). */
  private announceEpoch = 0;
  private lastAnnounceAt = -Infinity;
  private waiters: Array<{ pred: () => boolean; resolve: (ok: boolean) => void; timer: NodeJS.Timeout }> = [];
  private sinceYield = 0;
  private round = 0;
  private aborted = false;
  private phase: MasterProgress['phase'] = 'announce';
  readonly stats: MasterStats;

  constructor(private readonly options: MasterOptions) {
    this.plan = options.plan ?? DEFAULT_ID_PLAN;
    const planBad = idPlanProblem(this.plan);
    if (planBad) throw new RangeError(planBad);
    if (options.nodes.length === 0) throw new RangeError('no target nodes');
    for (const n of options.nodes) {
      const bad = nodeProblem(n);
      if (bad) throw new RangeError(bad);
    }
    if (options.image.length === 0) throw new RangeError('empty image');
    this.bus = options.bus;
    this.image = options.image;
    this.payload = options.stream?.bytes ?? options.image;
    if (this.payload.length === 0) throw new RangeError('empty stream');
    this.fd = options.fd ?? false;
    if (this.fd && !this.bus.fd) throw new RangeError(`${this.bus.name} was opened without CAN FD`);
    this.chunkSize = this.fd ? 64 : 8;
    this.nChunks = Math.ceil(this.payload.length / this.chunkSize);
    if (this.nChunks > 0x3fffff) throw new RangeError('image too large for 22-bit chunk numbers');
    this.window = Math.min(255, Math.max(1, options.window ?? (this.fd ? 96 : 64)));
    this.inflight = Math.max(1, options.inflight ?? 2);
    this.burst = Math.max(1, options.burst ?? 32);
    this.timeoutMs = options.timeoutMs ?? 200;
    this.retries = options.retries ?? 5;
    this.maxRounds = options.maxRounds ?? 64;
    this.targets = [...new Set(options.nodes)].sort((a, b) => a - b);
    for (const n of this.targets) this.nodes.set(n, { joined: false, joinx: null, running: null, verdict: null, silent: 0, answered: false, reportDone: false, instance: null, instanceEpoch: -1 });
    const session = options.session ?? randomInt(1, 256);
    if (!Number.isInteger(session) || session < 1 || session > 255) throw new RangeError('session must be 1..255');
    this.announce = {
      session, fd: this.fd, chunkSize: this.chunkSize, window: this.window,
      totalBytes: this.image.length, crc32: crc32(this.image) >>> 0,
      sha256: createHash('sha256').update(this.image).digest(), nodes: this.targets,
    };
    if (options.force) this.announce.force = true;
    if (options.probe) this.announce.probe = true;
    const st = options.stream;
    if (st) {
      this.announce.stream = { encoding: st.encoding, streamBytes: st.bytes.length, streamCrc32: crc32(st.bytes) >>> 0 };
      if (st.baseSha256) this.announce.stream.baseSha256 = st.baseSha256;
    }
    this.shortSha = shortSha(this.announce.sha256);
    for (let b = 0; b * BLOCK_CHUNKS < this.nChunks; b++) {
      const start = b * BLOCK_CHUNKS * this.chunkSize;
      this.blockCrcs.push(crc32(this.payload.subarray(start, start + BLOCK_CHUNKS * this.chunkSize)) >>> 0);
    }
    this.stats = {
      session, chunks: this.nChunks, chunkSize: this.chunkSize,
      sent: { announce: 0, sync: 0, data: 0, repair: 0, ctrl: 0 },
      heard: { join: 0, ack: 0, missing: 0, verdict: 0 },
      payloadBytes: 0, frameBytes: 0, rounds: 0, polls: 0, repairedChunks: 0, foreignFrames: 0, joinWaitMs: 0, ms: 0,
    };
  }

  get session(): number {
    return this.announce.session;
  }

  /**
   * Stop the transfer (Ctrl-C on the bench): every node without a verdict gets ECANCELED, the nodes
   * are told ABORT (their engine sessions are aborted), and `run()` resolves.
   */
  abort(reason = 'aborted'): void {
    if (this.aborted) return;
    this.aborted = true;
    for (const n of this.targets) {
      const s = this.nodes.get(n)!;
      if (!s.verdict) s.verdict = { node: n, status: 'ECANCELED', where: 'transfer', reason };
    }
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.resolve(false);
    }
  }

  async run(): Promise<MasterResult> {
    const started = performance.now();
    const unsubscribe = this.bus.receive((f) => this.onFrame(f));
    try {
      await this.joinPhase();
      if (this.options.probe) {
        // A probe moves nothing: every node that answered JOINED is done with it.
        for (const n of this.targets) {
          const st = this.nodes.get(n)!;
          if (!st.verdict && st.joined) st.verdict = { node: n, status: 'PROBED', where: 'none' };
        }
      } else {
        if (this.live().length > 0) await this.dataPhase();
        await this.reportPhase();
      }
      this.sendCtrl(BROADCAST, this.aborted ? CtrlKind.ABORT : CtrlKind.FINISH);
      this.phase = 'done';
      this.progress();
    } finally {
      unsubscribe();
      for (const w of this.waiters) {
        clearTimeout(w.timer);
        w.resolve(false);
      }
      this.waiters = [];
    }
    this.stats.ms = performance.now() - started;
    const s = this.stats;
    const frames = s.sent.announce + s.sent.sync + s.sent.data + s.sent.repair + s.sent.ctrl + s.heard.join + s.heard.ack + s.heard.missing + s.heard.verdict;
    s.frameBytes = frames * this.chunkSize;
    const verdicts = this.targets.map((n) => this.nodes.get(n)!.verdict!);
    const probes = new Map<number, ProbeAnswer>();
    if (this.options.probe) {
      for (const n of this.targets) {
        const st = this.nodes.get(n)!;
        if (st.verdict?.status !== 'PROBED') continue;
        const x = st.joinx;
        probes.set(n, {
          running: st.running === null ? null : x ? st.running + x.tail : st.running,
          codec: x && (x.deflate || x.patch) ? { deflate: x.deflate, patch: x.patch, maxWindowBits: x.maxWindowBits, ramBytes: x.ramBytes } : null,
        });
      }
    }
    const okAll = verdicts.every((v) => OK_STATUSES.has(v.status) || v.status === 'PROBED');
    return { ok: okAll, verdicts, stats: s, probes };
  }

  // ------------------------------------------------------------------------------------------

  private live(): number[] {
    return this.targets.filter((n) => {
      const s = this.nodes.get(n)!;
      return s.joined && !s.verdict;
    });
  }

  private drop(node: number, reason: string): void {
    const s = this.nodes.get(node)!;
    if (!s.verdict) s.verdict = { node, status: 'ETIMEDOUT', where: 'transfer', reason };
  }

  private progress(): void {
    this.options.onProgress?.({
      phase: this.phase, sent: this.position, total: this.nChunks, round: this.round,
      joined: this.targets.filter((n) => this.nodes.get(n)!.joined),
      verdicts: this.targets.map((n) => this.nodes.get(n)!.verdict).filter((v): v is NodeVerdict => v !== null),
    });
  }

  private post(frame: CanFrame): void {
    if (this.fd && frame.data.length > 8) frame.fd = true;
    this.bus.post(frame);
  }

  private sendCtrl(node: number, kind: number): void {
    this.stats.sent.ctrl++;
    this.post({ id: provId(this.plan, node, ProvOp.CTRL), data: encodeCtrl({ session: this.session, kind, round: this.round }) });
  }

  private sendAnnounce(): void {
    this.lastAnnounceAt = performance.now();
    this.announceEpoch++;
    for (const part of encodeAnnounceParts(this.announce, this.fd ? 64 : 8)) {
      this.stats.sent.announce++;
      this.post({ id: provId(this.plan, BROADCAST, ProvOp.ANNOUNCE), data: part });
    }
  }

  private sendSync(block: number): void {
    this.stats.sent.sync++;
    this.post({ id: provId(this.plan, BROADCAST, ProvOp.SYNC), data: encodeSync({ session: this.session, base: block * BLOCK_CHUNKS, blockCrc: this.blockCrcs[block]! }) });
  }

  private sendChunk(seq: number, repair: boolean): void {
    const start = seq * this.chunkSize;
    const data = this.payload.subarray(start, start + this.chunkSize);
    if (repair) this.stats.sent.repair++;
    else this.stats.sent.data++;
    this.stats.payloadBytes += data.length;
    const frame: CanFrame = { id: dataId(this.plan, seq), data };
    if (this.fd) frame.fd = true;
    this.bus.post(frame);
  }

  private async pace(): Promise<void> {
    if (++this.sinceYield >= this.burst) {
      this.sinceYield = 0;
      await yieldTurn();
    }
  }

  private waitUntil(pred: () => boolean, ms: number): Promise<boolean> {
    if (pred()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const w = {
        pred,
        resolve,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve(pred());
        }, ms),
      };
      this.waiters.push(w);
    });
  }

  private wake(): void {
    if (this.waiters.length === 0) return;
    const ready = this.waiters.filter((w) => w.pred());
    if (ready.length === 0) return;
    this.waiters = this.waiters.filter((w) => !ready.includes(w));
    for (const w of ready) {
      clearTimeout(w.timer);
      w.resolve(true);
    }
  }

  // ------------------------------------------------------------------------------------------

  private async joinPhase(): Promise<void> {
    const allJoined = (): boolean => this.targets.every((n) => this.nodes.get(n)!.joined || this.nodes.get(n)!.verdict);
    const o = this.options;
    const budget = o.joinBudgetMs ?? (o.timeoutMs === undefined && o.retries === undefined ? DEFAULT_JOIN_BUDGET_MS : Infinity);
    let waited = 0;
    for (let attempt = 0; attempt <= this.retries && !allJoined() && waited < budget; attempt++) {
      this.sendAnnounce();
      this.progress();
      const wait = Math.min(this.timeoutMs * 2 ** attempt, budget - waited);
      waited += wait;
      this.stats.joinWaitMs = waited;
      await this.waitUntil(allJoined, wait);
    }
    for (const n of this.targets) if (!this.nodes.get(n)!.joined) this.drop(n, 'no_join');
    this.progress();
  }

  private async dataPhase(): Promise<void> {
    this.phase = 'data';
    const W = this.window;
    for (this.position = 0; this.position < this.nChunks; this.position++) {
      const seq = this.position;
      if (seq % W === 0) {
        await this.windowOpen(seq / W);
        if (this.live().length === 0) return;
        this.progress();
      }
      if (this.aborted) return;
      if (seq % BLOCK_CHUNKS === 0) this.sendSync(seq / BLOCK_CHUNKS);
      this.sendChunk(seq, false);
      await this.pace();
    }
  }

  /** Wait until window k may be sent: at most `inflight` windows unacknowledged. */
  private async windowOpen(k: number): Promise<void> {
    const W = this.window;
    const open = (): boolean => k < this.inflight || this.released >= (k - this.inflight + 1) * W;
    let polled: number | null = null;
    let rotation = 0;
    /** Asks the next live node (in rotation) for its ACK; false when no node is live. */
    const poll = (): boolean => {
      const live = this.live();
      if (live.length === 0) return false;
      polled = live[rotation++ % live.length]!;
      this.polledAt = this.position;
      this.stats.polls++;
      this.sendCtrl(polled, CtrlKind.STATUS);
      return true;
    };
    // The ACK duty rotates over the announce's whole node list. When none of the windows whose ACK
    // would open this one has a live duty node (it is CURRENT, dropped or done), nobody will
    // acknowledge: ask a live node now rather than after a timeout.
    if (!open() && !this.ackExpected(k) && !poll()) return;
    // Bounded: a node that answers but lags cannot hold the transfer forever (repair covers it).
    for (let attempt = 0; attempt < 2 * (this.retries + 1); attempt++) {
      if (await this.waitUntil(open, this.timeoutMs * 2 ** Math.min(attempt, 3))) return;
      // No acknowledgement: the duty node may be gone or its ACK lost. Ask a live node directly;
      // one that was asked and stayed silent moves towards being dropped (an ACK resets it).
      if (polled !== null) {
        const s = this.nodes.get(polled)!;
        if (!s.verdict && ++s.silent > this.retries) this.drop(polled, 'no_ack');
      }
      if (!poll()) return;
    }
  }

  /** Whether a live node has the ACK duty of a window in flight whose ACK would open window k. */
  private ackExpected(k: number): boolean {
    const n = this.targets.length;
    for (let m = Math.max(0, k - this.inflight); m < k; m++) {
      const duty = this.nodes.get(this.targets[m % n]!)!;
      if (duty.joined && !duty.verdict) return true;
    }
    return false;
  }

  private async reportPhase(): Promise<void> {
    this.phase = 'repair';
    for (const s of this.nodes.values()) s.silent = 0;
    let broadcast = true;
    while (this.live().length > 0) {
      this.round++;
      this.stats.rounds = this.round;
      if (this.round > this.maxRounds) {
        for (const n of this.live()) this.drop(n, 'too_many_rounds');
        break;
      }
      const asked = this.live();
      for (const n of asked) {
        const s = this.nodes.get(n)!;
        s.answered = false;
        s.reportDone = false;
      }
      this.repairs.clear();
      if (broadcast) this.sendCtrl(BROADCAST, CtrlKind.REPORT);
      else for (const n of asked) this.sendCtrl(n, CtrlKind.REPORT);
      broadcast = false;
      const maxSilent = Math.max(0, ...asked.map((n) => this.nodes.get(n)!.silent));
      const done = (): boolean => asked.every((n) => this.nodes.get(n)!.verdict !== null || this.nodes.get(n)!.reportDone);
      await this.waitUntil(done, this.timeoutMs * 2 ** Math.min(maxSilent, 5));
      if (!done()) await this.waitUntil(done, this.timeoutMs); // a report still arriving
      for (const n of asked) {
        const s = this.nodes.get(n)!;
        if (s.verdict) continue;
        if (s.answered) s.silent = 0;
        else if (++s.silent > this.retries) this.drop(n, 'no_report');
      }
      this.progress();
      await this.repair();
    }
  }

  /** Send exactly the reported chunks, block by block (a SYNC first re-anchors each block). */
  private async repair(): Promise<void> {
    const seqs = [...this.repairs].sort((a, b) => a - b);
    let block = -1;
    for (const seq of seqs) {
      const b = (seq / BLOCK_CHUNKS) | 0;
      if (b !== block) {
        block = b;
        this.sendSync(b);
      }
      this.sendChunk(seq, true);
      this.stats.repairedChunks++;
      await this.pace();
    }
  }

  // ------------------------------------------------------------------------------------------

  private onFrame(f: CanFrame): void {
    if (f.ext) return;
    const c = classifyId(this.plan, f.id);
    if (c.kind === 'data') {
      this.stats.foreignFrames++; // we never hear our own frames: another master is sending data
      return;
    }
    if (c.kind !== 'prov') return;
    if (c.op < 4) {
      if (f.data[0] === this.session) this.stats.foreignFrames++;
      return;
    }
    if (f.data[0] !== this.session) return;
    const s = this.nodes.get(c.node);
    if (!s) return;
    switch (c.op) {
      case ProvOp.JOIN: {
        const j = decodeJoin(f.data);
        if (!j) return;
        this.stats.heard.join++;
        if ((f.data[1]! & 0x0f) === 0) {
          // JOINX: what the node decodes and more of its running SHA-256 (the JOIN follows it).
          const x = decodeJoinX(f.data);
          if (x) s.joinx = { deflate: x.deflate, patch: x.patch, maxWindowBits: x.maxWindowBits, ramBytes: x.ramBytes, tail: Buffer.from(x.running ?? []).toString('hex') };
          break;
        }
        // Two devices answering as one node id: two answers to one announce with different instance
        // tags (a node that restarted asks for the announce again first, so its new tag answers a
        // later one). That node is never READY, whatever either of them says later.
        if (s.verdict?.reason === 'node_id_collision') break;
        if (!(j.flags & JoinFlag.NEED_ANNOUNCE)) {
          const tag = j.instance ?? 0;
          if (s.instanceEpoch === this.announceEpoch && s.instance !== tag) {
            s.verdict = { node: c.node, status: 'EEXIST', where: 'transfer', reason: 'node_id_collision' };
            s.joined = true;
            s.silent = 0;
            break;
          }
          s.instance = tag;
          s.instanceEpoch = this.announceEpoch;
        }
        if (j.flags & JoinFlag.NEED_ANNOUNCE) {
          // A target restarted or missed the announce: announce again (rate-limited) and re-anchor.
          if (!s.verdict || s.verdict.reason === 'no_join') {
            if (performance.now() - this.lastAnnounceAt > this.timeoutMs / 2) {
              this.sendAnnounce();
              const block = Math.min((this.position / BLOCK_CHUNKS) | 0, this.blockCrcs.length - 1);
              if (this.phase !== 'announce') this.sendSync(block);
            }
          }
        } else if (j.flags & JoinFlag.CURRENT) {
          // The node runs the announced image already: it takes no part in this transfer.
          if (!s.verdict || s.verdict.reason === 'no_join') {
            const running = j.running ? shortSha(j.running) : this.shortSha;
            s.verdict = { node: c.node, status: 'CURRENT', where: 'none', from: running, to: this.shortSha };
          }
          s.joined = true;
          s.silent = 0;
        } else if (j.flags & JoinFlag.JOINED) {
          if (s.verdict?.reason === 'no_join') s.verdict = null; // a late join is welcome
          s.running = j.running ? shortSha(j.running) : null;
          s.joined = true;
          s.silent = 0;
        }
        break;
      }
      case ProvOp.ACK: {
        const a = decodeAck(f.data);
        if (!a) return;
        this.stats.heard.ack++;
        s.silent = 0;
        // Clip: a listener cannot acknowledge chunks that were not sent yet. The answer to a STATUS
        // poll vouches for everything sent before the poll (it was consumed or lost, not queued), which
        // also frees a node that rejoined after losing its session and so has seen nothing of it.
        this.released = Math.max(this.released, Math.min(a.next, this.position + 1), a.polled ? this.polledAt : 0);
        break;
      }
      case ProvOp.MISSING: {
        const m = decodeMissing(f.data, this.nChunks);
        if (!m) return;
        this.stats.heard.missing++;
        if (s.verdict || !s.joined) return;
        s.answered = true;
        for (const seq of m.seqs) this.repairs.add(seq);
        if (m.last) s.reportDone = true;
        break;
      }
      case ProvOp.VERDICT: {
        const v = decodeVerdict(f.data);
        if (!v) return;
        this.stats.heard.verdict++;
        if (s.verdict && s.verdict.reason !== 'no_join') return;
        const status = v.status === 0 ? (v.flags & VerdictFlag.UPDATED ? 'UPDATED' : 'READY') : statusName(v.status);
        if ((status === 'READY' || status === 'UPDATED') && v.crc32 !== this.announce.crc32) {
          s.verdict = { node: c.node, status: 'EBADMSG', where: 'transfer', reason: 'verdict_crc_mismatch' };
        } else {
          s.verdict = { node: c.node, status, where: whereName(v.where) };
          // A failure may name its reason (VERDICT flag REASON); BASE_MISMATCH: the node does not run the patch's base.
          if (v.status !== 0 && v.flags & VerdictFlag.REASON) {
            const reason = VERDICT_REASONS[v.crc32];
            if (reason) s.verdict.reason = reason;
          }
          if (v.status !== 0 && v.flags & VerdictFlag.BASE_MISMATCH) s.verdict.reason = s.verdict.reason ?? 'base_mismatch';
          if (status === 'READY' || status === 'UPDATED') s.verdict.crc32 = v.crc32;
          if (status === 'UPDATED' || (status === 'READY' && s.running !== null && s.running !== this.shortSha)) {
            if (s.running !== null) s.verdict.from = s.running;
          }
          if (status === 'CURRENT') s.verdict.from = this.shortSha;
          if (OK_STATUSES.has(status)) s.verdict.to = this.shortSha;
        }
        s.joined = true;
        s.answered = true;
        break;
      }
    }
    this.wake();
  }
}

/** Parses `1-16`, `3,5,7-9` into sorted unique node ids. */
export function parseNodeList(spec: string): number[] | string {
  const out = new Set<number>();
  for (const part of spec.split(',')) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m) return `bad node list "${spec}" (expected e.g. 1-16 or 3,5,7-9)`;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) return `bad node range ${part}`;
    for (let n = a; n <= b; n++) {
      const bad = nodeProblem(n);
      if (bad) return bad;
      out.add(n);
    }
  }
  return [...out].sort((x, y) => x - y);
}
