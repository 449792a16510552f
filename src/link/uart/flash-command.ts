/**
 * `hsx-gateway flash --uart PORT [--baud N] [--force] IMAGE`: the master. Checks the image locally
 * (format and CRC; budgets are the device's business), sends it, and shows progress: a bar with
 * bytes, rate and ETA on a terminal, JSON lines with --json, plain lines otherwise. The verdict is
 * READY (installed), UPDATED (from → to) or CURRENT (the device already ran this image: nothing was
 * sent; `--force` sends it anyway); exit 0 for all three, 1 for an error.
 */
import { readFile } from 'node:fs/promises';
import { ContentStore, defaultCacheDir } from '../delta/image-store.js';
import type { TransferReport } from '../flasher.js';
import cliProgress from 'cli-progress';
import { checkImageToSend } from '../image-check.js';
import { UartLinkError } from './port-transport.js';
import { UART_TARGET, UartFlasher } from './flasher.js';
import type { FlashOutcome, MasterProgress, SessionRestart } from './master.js';
import type { ImageInfo } from './messages.js';
import { DEFAULT_BAUD, DEFAULT_CHUNK, DEFAULT_WINDOW } from './settings.js';
import type { UartError } from './errors.js';

export interface UartFlashOptions {
  port: string;
  image: string;
  baud?: number;
  chunk?: number;
  window?: number;
  json: boolean;
  /** Send even when the device already runs the image. */
  force?: boolean;
  out?: (line: string) => void;
  /** Show a progress bar (default: stderr is a terminal and not --json). */
  bar?: boolean;
  /** The content-addressed image store (default defaultCacheDir()). */
  cache?: string;
  /** Images to add to the store by hand (bases a device may run). */
  bases?: string[];
  /** Allow the compressed image / a delta patch (default true each). */
  compress?: boolean;
  delta?: boolean;
}

/** Verifies only what the sender can know: the format and CRC, with the VM budgets lifted. */

export async function uartFlashCommand(o: UartFlashOptions): Promise<number> {
  const out = o.out ?? ((line: string) => void process.stdout.write(`${line}\n`));
  const fail = (e: Pick<UartError, 'code' | 'where' | 'reason' | 'message'> & Partial<UartError>): number => {
    out(o.json ? JSON.stringify({ ok: false, event: 'error', error: e }) : `flash: ${e.message}`);
    return e.code === 'ETIMEDOUT' && e.reason === 'no_listener' ? 3 : 1; // 3: no device answered
  };

  let bytes: Uint8Array;
  try {
    bytes = await readFile(o.image);
  } catch (e) {
    return fail({ code: 'ENOENT', where: 'image', reason: 'image_unreadable', message: `cannot read ${o.image}: ${(e as Error).message}` });
  }
  const checked = checkImageToSend(bytes, o.image);
  if (!checked.ok) return fail(checked.error);
  const appName = checked.appName;

  // The content-addressed store: the image flashed goes in (the flasher puts it), and so does every --base.
  const images = new ContentStore(o.cache ?? defaultCacheDir());
  for (const file of o.bases ?? []) {
    let base: Uint8Array;
    try {
      base = await readFile(file);
    } catch (e) {
      return fail({ code: 'ENOENT', where: 'image', reason: 'base_unreadable', message: `cannot read --base ${file}: ${(e as Error).message}` });
    }
    try {
      await images.put(base);
    } catch (e) {
      return fail({ code: 'EIO', where: 'image', reason: 'cache_unwritable', message: `cannot store --base ${file} in ${images.dir}: ${(e as Error).message}` });
    }
  }

  const baud = o.baud ?? DEFAULT_BAUD;
  const chunk = o.chunk ?? DEFAULT_CHUNK;
  const window = o.window ?? DEFAULT_WINDOW;
  let flasher: UartFlasher;
  try {
    flasher = await UartFlasher.open(o.port, { path: o.port, baudRate: baud }, { images });
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
    // Nothing answered the first OPEN yet: say so while it tries (a wrong port or baud rate shows at once).
    if (p.phase === 'open' && p.openAttempts > 1 && !o.json) {
      process.stderr.write(`flash: no answer yet on ${o.port} at ${baud} baud (OPEN sent ${p.openAttempts} times)\n`);
    }
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
      resumeOffset: p.resumeOffset, bytesPerSecond: Math.round(rate(p)), retransmits: p.retransmits, openAttempts: p.openAttempts }));
  };

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
  // The retransmission timeout defaults to one sized for the line (rtoForLine), as before.
  const result = await flasher.flash({
    image: bytes, appName, targets: [UART_TARGET], options: { chunk, window, force: o.force === true, compress: o.compress !== false, delta: o.delta !== false },
    onLinkProgress: onProgress, onRestart,
  });
  bar?.stop();
  await flasher.close();
  if (!result.outcome) {
    const e = result.error!;
    // No device on the cable: what to check, not only what happened.
    if (e.reason === 'no_listener') {
      return fail({ ...e, message: `nothing answered on ${o.port} at ${baud} baud (${e.message}): check the cable, the baud rate, and that a device listens on the other end` });
    }
    return fail(e);
  }
  const r = result.outcome;
  const transport = flasher.transport;
  const verdict = VERDICT[r.outcome];
  const t = result.transfer!;
  if (!o.json) out(describeTransfer(t));
  out(o.json
    ? JSON.stringify({
      event: verdict.toLowerCase(), verdict, ...r, to: r.image, counters: transport.status().counters,
      mode: t.mode.toUpperCase(), bytes_on_wire: t.bytes_on_wire, ratio: t.ratio, stream_bytes: t.stream_bytes, image_bytes: t.image_bytes, base: t.base,
      ...(t.fallback ? { fallback: t.fallback } : {}),
    })
    : describeVerdict(o.port, r));
  return 0;
}

/** `flash: DELTA from 1a2b3c4d5e6f: 1,234 bytes on the wire for a 20,480-byte image (ratio 0.060)`. */
function describeTransfer(t: TransferReport): string {
  const how = t.mode === 'delta' ? `DELTA from ${t.base!.slice(0, 12)}` : t.mode.toUpperCase();
  const why = t.fallback === 'base_mismatch' ? ' (the device does not run the base it reported: full image sent instead of a patch)' : '';
  return t.mode === 'current'
    ? `flash: CURRENT: 0 bytes on the wire`
    : `flash: ${how}: ${t.bytes_on_wire} bytes on the wire for a ${t.image_bytes}-byte image (ratio ${t.ratio.toFixed(3)})${why}`;
}

const VERDICT = { installed: 'READY', updated: 'UPDATED', current: 'CURRENT' } as const;

/** `sensor_app 1.2.0 (sha256 0123abcd…)`: an image as a person wants to see it. */
function imageLabel(i: ImageInfo): string {
  return `${i.appName}${i.version ? ` ${i.version}` : ''} (sha256 ${i.sha256.slice(0, 12)}…)`;
}

function describeVerdict(port: string, r: FlashOutcome): string {
  const timing = `${r.totalBytes} bytes in ${(r.elapsedMs / 1000).toFixed(2)} s` +
    (r.resumeOffset > 0 ? ` (resumed at byte ${r.resumeOffset})` : '') + (r.retransmits > 0 ? `, ${r.retransmits} retransmitted frames` : '');
  switch (r.outcome) {
    case 'current':
      return `flash: CURRENT on ${port}: the device already runs ${imageLabel(r.image)} as pid ${r.pid}; nothing sent (--force sends it anyway)`;
    case 'updated':
      return `flash: UPDATED on ${port}: ${r.from ? imageLabel(r.from) : '(unknown)'} → ${imageLabel(r.image)}, pid ${r.pid}, ${timing}` +
        (r.confirmPending ? '; confirmed once it has run for the device\'s confirm window' : '');
    case 'installed':
      return `flash: READY on ${port}: ${r.appName} pid ${r.pid}, ${timing}`;
  }
}
