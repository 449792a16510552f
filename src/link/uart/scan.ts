/**
 * Inventory over a UART link (docs/uart_protocol.md, "INFO"): one device per cable, target "1".
 * The master sends INFO_REQ (version 2) and the device answers INFO: what it runs (app, version,
 * SHA-256), what its flash slots hold and how large a slot is. A device that does not know INFO
 * (protocol version 1, or an older version 2 listener) drops the frame unanswered; the scan then
 * probes it with an OPEN of an empty image, which every version answers with an ERROR and never
 * installs (version 1: `EPROTO unsupported_version`, version 2: `EBADMSG total_invalid`), so a
 * silent cable ("no device") and a device without INFO ("unsupported") are told apart.
 */
import { randomInt } from 'node:crypto';
import type { Transport } from '../transport.js';
import type { InventoryEntry } from '../flasher.js';
import { FrameType, type Frame } from './frame.js';
import { CODEC_VERSION, decodeError, decodeInfo, encodeAbort, encodeInfoRequest, encodeOpen, INFO_VERSION as PROTOCOL_VERSION, type InfoMessage } from './messages.js';

/** The one target of a UART link. */
export const UART_SCAN_TARGET = '1';

export interface UartScanOptions {
  /** Wait for an answer this long per attempt (default 500 ms). */
  timeoutMs?: number;
  /** INFO requests repeated after a silent attempt (default 2). */
  retries?: number;
  /** Tell a device without INFO from no device at all (default true). */
  probe?: boolean;
  signal?: AbortSignal;
}

/** The device answered, but not with a usable INFO: a value, never thrown. */
export interface UartScanProblem {
  target: string;
  /** ENOTSUP (the device does not know INFO), EBADMSG (a malformed INFO), or the device's own ERROR code. */
  code: string;
  where: string;
  reason: string;
  /** Byte offset in the INFO payload (EBADMSG), else null. */
  offset: number | null;
  message: string;
  /** For ENOTSUP: the protocol version the device speaks (1, or 2 without INFO). */
  protocolVersion?: number;
}

export interface UartScanReport {
  /** The device (target "1"), or nothing when no device answered. */
  entries: InventoryEntry[];
  problems: UartScanProblem[];
  cancelled: boolean;
  /** INFO requests sent. */
  attempts: number;
  elapsedMs: number;
}

type Wait = { frame: Frame } | { silent: true } | { aborted: true };

function exchange(transport: Transport<Frame, Frame>, frame: Frame, match: (f: Frame) => boolean, timeoutMs: number, signal?: AbortSignal): Promise<Wait> {
  return new Promise<Wait>((resolve) => {
    let timer: NodeJS.Timeout | null = null;
    const done = (w: Wait): void => {
      if (timer) clearTimeout(timer);
      stop();
      signal?.removeEventListener('abort', onAbort);
      resolve(w);
    };
    const onAbort = (): void => done({ aborted: true });
    const stop = transport.receive((f) => {
      if (match(f)) done({ frame: f });
    });
    if (signal?.aborted) return done({ aborted: true });
    signal?.addEventListener('abort', onAbort, { once: true });
    timer = setTimeout(() => done({ silent: true }), timeoutMs);
    // A send that fails (the port went away) shows as silence: nothing answers.
    transport.send(frame).catch(() => {});
  });
}

/** What the device on this link runs: one entry (target "1"), or none. Problems: `scanUartReport`. */
export async function scanUart(transport: Transport<Frame, Frame>, opts: UartScanOptions = {}): Promise<InventoryEntry[]> {
  return (await scanUartReport(transport, opts)).entries;
}

/** `scanUart` with the reason a device that answered was not listed. Rejects only for bad options (RangeError). */
export async function scanUartReport(transport: Transport<Frame, Frame>, opts: UartScanOptions = {}): Promise<UartScanReport> {
  const timeoutMs = opts.timeoutMs ?? 500;
  const retries = opts.retries ?? 2;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new RangeError(`timeoutMs must be a number ≥ 0, got ${timeoutMs}`);
  if (!Number.isInteger(retries) || retries < 0) throw new RangeError(`retries must be an integer ≥ 0, got ${retries}`);
  const started = Date.now();
  const report = (r: Omit<UartScanReport, 'elapsedMs'>): UartScanReport => ({ ...r, elapsedMs: Date.now() - started });
  const tag = randomInt(1, 256);
  const nonce = randomInt(0, 2 ** 32);
  const request: Frame = { type: FrameType.INFO_REQ, tag, seq: nonce, payload: encodeInfoRequest(PROTOCOL_VERSION) };
  const answers = (f: Frame): boolean => f.tag === tag && ((f.type === FrameType.INFO && f.seq === nonce) || f.type === FrameType.ERROR);
  let attempts = 0;
  for (let i = 0; i <= retries; i++) {
    attempts++;
    const w = await exchange(transport, request, answers, timeoutMs, opts.signal);
    if ('aborted' in w) return report({ entries: [], problems: [], cancelled: true, attempts });
    if ('silent' in w) continue;
    const f = w.frame;
    if (f.type === FrameType.ERROR) {
      const e = decodeError(f.payload);
      const remote = e.ok ? e.value : { code: 'EPROTO', where: 'session', reason: 'bad_error' };
      const problem: UartScanProblem = remote.reason === 'unsupported_version'
        ? { target: UART_SCAN_TARGET, code: 'ENOTSUP', where: 'session', reason: 'info_unsupported', offset: null,
            message: `the device does not support INFO version ${PROTOCOL_VERSION} (it answers unsupported_version)` }
        : { target: UART_SCAN_TARGET, code: remote.code, where: remote.where, reason: remote.reason, offset: null,
            message: `the device refused INFO: ${remote.code} at ${remote.where}: ${remote.reason}` };
      return report({ entries: [], problems: [problem], cancelled: false, attempts });
    }
    const info = decodeInfo(f.payload);
    if (!info.ok) {
      return report({
        entries: [], cancelled: false, attempts,
        problems: [{ target: UART_SCAN_TARGET, code: 'EBADMSG', where: 'session', reason: 'bad_info', offset: info.error.offset, message: `INFO: ${info.error.message} (payload offset ${info.error.offset})` }],
      });
    }
    return report({ entries: [{ target: UART_SCAN_TARGET, ...info.value }], problems: [], cancelled: false, attempts });
  }
  if (opts.probe === false) return report({ entries: [], problems: [], cancelled: false, attempts });
  // Silent to INFO: a device that does not know it, or none. An OPEN of an empty image is refused by
  // every version before anything is allocated, so the answer only says who is there.
  const probeTag = tag === 255 ? 1 : tag + 1;
  const open: Frame = {
    type: FrameType.OPEN, tag: probeTag, seq: randomInt(0, 2 ** 32),
    payload: encodeOpen({ version: PROTOCOL_VERSION, chunkSize: 16, window: 1, totalBytes: 0, crc32: 0, sha256: new Uint8Array(32), appName: '', force: false }),
  };
  const w = await exchange(transport, open, (f) => f.tag === probeTag && f.type !== FrameType.DATA, timeoutMs, opts.signal);
  if ('aborted' in w) return report({ entries: [], problems: [], cancelled: true, attempts });
  if ('silent' in w) return report({ entries: [], problems: [], cancelled: false, attempts });
  if (w.frame.type === FrameType.ACCEPT || w.frame.type === FrameType.CURRENT) {
    // Not a device of ours (it took an empty image): end what it opened.
    await transport.send({ type: FrameType.ABORT, tag: probeTag, seq: 0, payload: encodeAbort('scan probe') }).catch(() => {});
  }
  const e = w.frame.type === FrameType.ERROR ? decodeError(w.frame.payload) : null;
  const v1 = e?.ok === true && e.value.reason === 'unsupported_version';
  return report({
    entries: [], cancelled: false, attempts,
    problems: [{
      target: UART_SCAN_TARGET, code: 'ENOTSUP', where: 'session', reason: 'info_unsupported', offset: null, protocolVersion: v1 ? 1 : 2,
      message: v1
        ? 'the device speaks UART protocol version 1, which has no INFO: it cannot be inventoried'
        : 'the device answers but not to INFO (a version 2 listener from before INFO): it cannot be inventoried',
    }],
  });
}

/** What `queryCodec` learnt: the INFO of version 3, or why the device gets a raw stream. */
export type CodecQuery =
  | { ok: true; info: InfoMessage }
  /** `old_device`: it refused INFO version 3 (a version 2 device); `silent`: no answer (version 1, or nothing on the cable). */
  | { ok: false; reason: 'old_device' | 'silent' | 'bad_info' | 'cancelled'; message: string };

/**
 * Before data moves (issue 25): INFO_REQ of version 3, answered with what the device runs and what it
 * decodes (INFO's CODEC block). A device older than version 3 answers `unsupported_version` (or
 * nothing): the master then sends it the raw image in the version it speaks.
 */
export async function queryCodec(transport: Transport<Frame, Frame>, opts: { timeoutMs?: number; retries?: number; signal?: AbortSignal } = {}): Promise<CodecQuery> {
  const timeoutMs = opts.timeoutMs ?? 500;
  const retries = opts.retries ?? 1;
  const tag = randomInt(1, 256);
  const nonce = randomInt(0, 2 ** 32);
  const request: Frame = { type: FrameType.INFO_REQ, tag, seq: nonce, payload: encodeInfoRequest(CODEC_VERSION) };
  const answers = (f: Frame): boolean => f.tag === tag && ((f.type === FrameType.INFO && f.seq === nonce) || f.type === FrameType.ERROR);
  for (let i = 0; i <= retries; i++) {
    const w = await exchange(transport, request, answers, timeoutMs, opts.signal);
    if ('aborted' in w) return { ok: false, reason: 'cancelled', message: 'cancelled' };
    if ('silent' in w) continue;
    if (w.frame.type === FrameType.ERROR) {
      const e = decodeError(w.frame.payload);
      return { ok: false, reason: 'old_device', message: `the device answers INFO version ${CODEC_VERSION} with ${e.ok ? `${e.value.code} ${e.value.reason}` : 'an unreadable ERROR'}` };
    }
    const info = decodeInfo(w.frame.payload);
    if (!info.ok) return { ok: false, reason: 'bad_info', message: `unreadable INFO: ${info.error.message} (offset ${info.error.offset})` };
    return { ok: true, info: info.value };
  }
  return { ok: false, reason: 'silent', message: `no answer to INFO version ${CODEC_VERSION}` };
}
