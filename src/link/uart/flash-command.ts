/**
 * `hsx-gateway flash --uart PORT [--baud N] IMAGE`: the master. Checks the image locally (format
 * and CRC; budgets are the device's business), sends it, and shows progress: a bar with bytes,
 * rate and ETA on a terminal, JSON lines with --json, plain lines otherwise. Exit 0 only when the
 * device reported READY.
 */
import { readFile } from 'node:fs/promises';
import cliProgress from 'cli-progress';
import { parseImage } from '../../hxe/index.js';
import { UartPortTransport, UartLinkError } from './port-transport.js';
import { sendImage, type MasterProgress, type SessionRestart } from './master.js';
import { DEFAULT_BAUD, DEFAULT_CHUNK, DEFAULT_MASTER_TIMING, DEFAULT_WINDOW, rtoForLine } from './settings.js';
import type { UartError } from './errors.js';

export interface UartFlashOptions {
  port: string;
  image: string;
  baud?: number;
  chunk?: number;
  window?: number;
  json: boolean;
  out?: (line: string) => void;
  /** Show a progress bar (default: stderr is a terminal and not --json). */
  bar?: boolean;
}

/** Verifies only what the sender can know: the format and CRC, with the VM budgets lifted. */
const NO_BUDGET = { maxCode: 0x7fffffff, maxRodata: 0x7fffffff, maxBss: 0x7fffffff };

export async function uartFlashCommand(o: UartFlashOptions): Promise<number> {
  const out = o.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const fail = (e: Pick<UartError, 'code' | 'where' | 'reason' | 'message'> & Partial<UartError>): number => {
    out(o.json ? JSON.stringify({ event: 'error', error: e }) : `flash: ${e.message}`);
    return 1;
  };

  let bytes: Uint8Array;
  try {
    bytes = await readFile(o.image);
  } catch (e) {
    return fail({ code: 'ENOENT', where: 'image', reason: 'image_unreadable', message: `cannot read ${o.image}: ${(e as Error).message}` });
  }
  const parsed = parseImage(bytes, NO_BUDGET);
  if (!parsed.ok) {
    const { code, reason, message, offset } = parsed.error;
    return fail({ code, where: 'image', reason, message: `${o.image} is not a valid image: ${message}`, detail: { offset } });
  }
  const appName = parsed.value.header.appName;

  const baud = o.baud ?? DEFAULT_BAUD;
  const chunk = o.chunk ?? DEFAULT_CHUNK;
  const window = o.window ?? DEFAULT_WINDOW;
  const transport = new UartPortTransport({ path: o.port, baudRate: baud });
  try {
    await transport.open();
  } catch (e) {
    return fail(e instanceof UartLinkError ? e.info : { code: 'EIO', where: 'open', reason: 'open_failed', message: String(e) });
  }

  const showBar = o.bar ?? (!o.json && process.stderr.isTTY === true);
  const bar = showBar
    ? new cliProgress.SingleBar({
        format: 'flash {bar} {percentage}% | {value}/{total} bytes | {rate} | ETA {eta_formatted}',
        hideCursor: true,
        etaBuffer: 20,
      }, cliProgress.Presets.shades_classic)
    : null;
  const started = Date.now();
  let lastLine = 0;
  const rate = (p: MasterProgress): number => {
    const secs = (Date.now() - started) / 1000;
    return secs > 0 ? (p.ackedBytes - p.resumeOffset) / secs : 0;
  };
  let barStarted = false;
  const onProgress = (p: MasterProgress): void => {
    if (bar) {
      if (!barStarted) {
        barStarted = true;
        bar.start(p.totalBytes, p.ackedBytes, { rate: '-' });
      } else if (p.phase !== 'open') bar.update(p.ackedBytes, { rate: `${(rate(p) / 1024).toFixed(1)} KiB/s` });
      return;
    }
    if (!o.json) return;
    const now = Date.now();
    // JSON progress at most every 200 ms, plus every phase change.
    if (p.phase === 'data' && p.ackedBytes < p.totalBytes && now - lastLine < 200) return;
    lastLine = now;
    out(JSON.stringify({ event: 'progress', phase: p.phase, ackedBytes: p.ackedBytes, totalBytes: p.totalBytes,
      resumeOffset: p.resumeOffset, bytesPerSecond: Math.round(rate(p)), retransmits: p.retransmits }));
  };

  const timing = { rtoMs: rtoForLine(baud, chunk, window, DEFAULT_MASTER_TIMING.rtoMs) };
  const onRestart = (c: SessionRestart): void => {
    const line = o.json
      ? JSON.stringify({ event: 'restart', ...c })
      : c.reason === 'line_too_lossy'
        ? `flash: the line is losing frames (${c.retransmits} resent, ${c.delivered} delivered): going on with ${c.to}-byte frames from byte ${c.ackedBytes}`
        : c.reason === 'line_recovered'
          ? `flash: the line is clean again (${c.delivered} frames delivered): going on with ${c.to}-byte frames from byte ${c.ackedBytes}`
          : `flash: the device stopped waiting for data while the line repaired a gap: going on from byte ${c.ackedBytes}`;
    if (bar) bar.stop();
    out(line);
    if (bar) {
      barStarted = false; // restarted at the next progress report
    }
  };
  const result = await sendImage(transport, bytes, { appName, chunkSize: chunk, window, timing, onProgress, onRestart });
  bar?.stop();
  await transport.close();
  if (!result.ok) return fail(result.error);
  const r = result.value;
  out(o.json
    ? JSON.stringify({ event: 'ready', ...r, counters: transport.status().counters })
    : `flash: READY on ${o.port}: ${r.appName} pid ${r.pid}, ${r.totalBytes} bytes in ${(r.elapsedMs / 1000).toFixed(2)} s` +
      (r.resumeOffset > 0 ? ` (resumed at byte ${r.resumeOffset})` : '') + (r.retransmits > 0 ? `, ${r.retransmits} retransmitted frames` : ''));
  return 0;
}
