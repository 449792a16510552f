/**
 * The CAN master's schedule for one image (issue 25): after a probe (master.ts, ANNOUNCE flag PROBE)
 * every node has said CURRENT, or what it runs (a 7-byte SHA-256 prefix) and what it decodes. Nodes are
 * grouped by (base, capabilities); each group gets what `chooseTransfer` (src/link/delta/device-plan.ts,
 * the planner UART uses too) picks for one of its nodes: a patch from the base the store holds, the
 * compressed image, or the raw one. Then the broadcasts:
 *
 *   - one per delta group (its own patch);
 *   - one compressed broadcast per window size, to every group that gets the compressed image;
 *   - one raw broadcast to every node that decodes nothing (or when both are turned off);
 *   - unless the compressed image to every node that decodes it moves fewer bytes than those patches and
 *     compressed broadcasts together: then that one broadcast replaces them.
 *
 * A patch is never planned where it is not strictly smaller than the compressed image (cheapestTransfer).
 */
import { chooseTransfer, type CompressedImage, type ImageSource, type TransferChoice, type TransferMode } from '../delta/index.js';
import type { AnnounceStream } from './messages.js';
import type { ProbeAnswer } from './master.js';

export interface Broadcast {
  mode: Exclude<TransferMode, 'current'>;
  nodes: number[];
  /** The base a delta applies to (SHA-256 hex), else null. */
  base: string | null;
  /** What the chunks carry (absent: the raw image). */
  stream?: { encoding: AnnounceStream['encoding']; bytes: Uint8Array; baseSha256?: Uint8Array };
  /** Bytes of that stream (the image's for raw). */
  streamBytes: number;
}

export interface CanPlan {
  imageBytes: number;
  /** Nodes that run the image already (skipped). */
  current: number[];
  broadcasts: Broadcast[];
  /** Stream bytes of all broadcasts (one data pass each, before repairs). */
  totalBytes: number;
  /** Set when the compressed image to everyone replaced per-group broadcasts (it moves fewer bytes). */
  compressedToAll?: { instead: number };
}

export interface CanPlanOptions {
  compress?: boolean;
  delta?: boolean;
  force?: boolean;
  /** Leave out this base (nodes refused it at the announce). */
  excludeBase?: string;
}

/** The full SHA-256 a node runs, from its prefix, when the store holds exactly one image with it. */
async function baseOf(prefix: string | null, store: ImageSource | null): Promise<string | null> {
  if (!prefix || !store?.resolve || prefix.length < 14) return null;
  return store.resolve(prefix);
}

export async function planCanTransfer(
  image: Uint8Array, answers: ReadonlyMap<number, ProbeAnswer>, store: ImageSource | null, o: CanPlanOptions = {}, current: number[] = [],
): Promise<CanPlan> {
  const cache = new Map<number, CompressedImage>();
  const groups = new Map<string, { nodes: number[]; answer: ProbeAnswer }>();
  for (const [node, a] of [...answers].sort((x, y) => x[0] - y[0])) {
    const c = a.codec;
    const key = `${a.running ?? '-'}|${c ? `${+c.deflate}${+c.patch}/${c.maxWindowBits}/${c.ramBytes}` : 'raw'}`;
    const g = groups.get(key);
    if (g) g.nodes.push(node);
    else groups.set(key, { nodes: [node], answer: a });
  }
  const deltas: Broadcast[] = [];
  const compressed = new Map<number, Broadcast>();
  let raw: Broadcast | null = null;
  let deflateNodes: number[] = [];
  let minWindow = 12;
  for (const { nodes, answer } of groups.values()) {
    const sha = await baseOf(answer.running, store);
    const choice: TransferChoice = await chooseTransfer(image, { sha256: sha, codec: answer.codec }, store, {
      compress: o.compress !== false, delta: o.delta !== false, force: true, compressedCache: cache, ...(o.excludeBase ? { excludeBase: o.excludeBase } : {}),
    });
    if (answer.codec?.deflate) {
      deflateNodes = deflateNodes.concat(nodes);
      minWindow = Math.min(minWindow, answer.codec.maxWindowBits);
    }
    const enc = choice.encoded;
    const same = choice.mode === 'delta' && enc ? deltas.find((d) => d.base === choice.base && Buffer.from(d.stream!.bytes).equals(Buffer.from(enc.bytes))) : undefined;
    if (same) same.nodes.push(...nodes); // another group on the same base, given the same patch: one broadcast
    else if (choice.mode === 'delta' && enc) {
      deltas.push({ mode: 'delta', nodes, base: choice.base, stream: { encoding: { kind: 'patch' }, bytes: enc.bytes, baseSha256: enc.baseSha256! }, streamBytes: enc.bytes.length });
    } else if (choice.mode === 'compressed' && enc) {
      const b = compressed.get(enc.windowBits);
      if (b) b.nodes.push(...nodes);
      else compressed.set(enc.windowBits, { mode: 'compressed', nodes: [...nodes], base: null, stream: { encoding: { kind: 'deflate', windowBits: enc.windowBits }, bytes: enc.bytes }, streamBytes: enc.bytes.length });
    } else {
      if (raw) raw.nodes.push(...nodes);
      else raw = { mode: 'raw', nodes: [...nodes], base: null, streamBytes: image.length };
    }
  }
  let encoded: Broadcast[] = [...deltas, ...compressed.values()];
  const sum = (bs: Broadcast[]): number => bs.reduce((n, b) => n + b.streamBytes, 0);
  const plan: CanPlan = { imageBytes: image.length, current: [...current].sort((a, b) => a - b), broadcasts: [], totalBytes: 0 };
  if (o.compress !== false && encoded.length > 1 && deflateNodes.length > 0) {
    // The alternative: one compressed broadcast to every node that decodes deflate.
    const wb = Math.max(9, Math.min(12, minWindow));
    const all = cache.get(wb) ?? null;
    if (all && all.bytes.length < sum(encoded) && encoded.every((b) => b.nodes.every((n) => deflateNodes.includes(n)))) {
      plan.compressedToAll = { instead: sum(encoded) };
      encoded = [{
        mode: 'compressed', nodes: [...deflateNodes].sort((a, b) => a - b), base: null,
        stream: { encoding: { kind: 'deflate', windowBits: all.windowBits }, bytes: all.bytes }, streamBytes: all.bytes.length,
      }];
    }
  }
  for (const b of encoded) b.nodes.sort((x, y) => x - y);
  if (raw) raw.nodes.sort((x, y) => x - y);
  plan.broadcasts = raw ? [...encoded, raw] : encoded;
  plan.totalBytes = sum(plan.broadcasts);
  return plan;
}

/** `1-8,11`: a node list as a person reads it. */
export function nodeRanges(nodes: readonly number[]): string {
  const s = [...nodes].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < s.length; i++) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j]! + 1) j++;
    out.push(j > i ? `${s[i]}-${s[j]}` : `${s[i]}`);
    i = j;
  }
  return out.join(',');
}

/** The plan as the CLI prints it before anything moves. */
export function describePlan(p: CanPlan): string[] {
  const lines: string[] = [];
  const moving = p.broadcasts.reduce((n, b) => n + b.nodes.length, 0);
  lines.push(`plan: ${p.imageBytes}-byte image; ${p.current.length} CURRENT (skipped)${p.current.length ? `: nodes ${nodeRanges(p.current)}` : ''}; ${moving} to send in ${p.broadcasts.length} broadcast${p.broadcasts.length === 1 ? '' : 's'}`);
  for (const b of p.broadcasts) {
    const how = b.mode === 'delta' ? `DELTA from ${b.base!.slice(0, 12)}` : b.mode.toUpperCase();
    lines.push(`  ${how.padEnd(23)} nodes ${nodeRanges(b.nodes).padEnd(12)} ${b.streamBytes} bytes (ratio ${(b.streamBytes / Math.max(1, p.imageBytes)).toFixed(3)})`);
  }
  if (p.compressedToAll) lines.push(`  (the compressed image to all: ${p.totalBytes} bytes instead of ${p.compressedToAll.instead} in per-group broadcasts)`);
  lines.push(`  total ${p.totalBytes} bytes on the wire before repairs, against ${p.imageBytes} for one raw broadcast`);
  return lines;
}
