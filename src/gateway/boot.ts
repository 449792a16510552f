/**
 * The boot sequence of one device: restore the committed image (falling back to the known-good
 * slot when it will not load), then load what the sources offer in priority order (host preload
 * directory → SD manifest → whatever else is configured), persisting what a manifest asks to
 * keep. A boot-attempt counter survives crashes (it is written before anything is tried), and
 * after `maxFailedBoots` consecutive failures the device raises an alert and stops retrying —
 * a boot loop on a bench rig must not wear out the flash overnight.
 */
import { readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import type { Clock, EventSink, TaskInfo } from '../engine/index.js';
import { decodeHeader } from '../hxe/header.js';
import type { ImageSourceTransport, SourceDelivery } from '../link/sources/source-transport.js';
import type { SourcedImage, SourceProblem } from '../link/sources/sourced-image.js';
import type { SimulatedDevice } from '../persist/simulated-device.js';

export interface BootOptions {
  device: SimulatedDevice;
  stateDir: string;
  /** In priority order; each is opened, drained and closed in turn. */
  sources: ImageSourceTransport[];
  events: EventSink;
  clock: Clock;
  maxFailedBoots: number;
  /** A test-committed image is confirmed once its task has stayed loaded this long. */
  confirmWindowMs: number;
}

export interface BootReport {
  attempt: number;
  /** The image restored from the device's flash, if any. */
  restored: TaskInfo | null;
  loaded: Array<{ source: string; pid: number; appName: string }>;
  failed: Array<{ source: string; error: string }>;
  problems: SourceProblem[];
  /** True when the boot gave up because of earlier consecutive failures. */
  halted: boolean;
  ok: boolean;
  /** Cancels the pending confirm-or-rollback of tested images (on shutdown before the window ends). */
  cancelConfirm: () => void;
}

interface BootCounter {
  consecutiveFailures: number;
  attempts: number;
}

const COUNTER_FILE = 'boot.json';

function readCounter(dir: string): BootCounter {
  try {
    const raw = JSON.parse(readFileSync(join(dir, COUNTER_FILE), 'utf8')) as Partial<BootCounter>;
    const n = (v: unknown) => (typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : 0);
    return { consecutiveFailures: n(raw.consecutiveFailures), attempts: n(raw.attempts) };
  } catch {
    return { consecutiveFailures: 0, attempts: 0 };
  }
}

/** Write-then-rename with fsync, so a crash leaves either the old or the new counter. */
function writeCounter(dir: string, c: BootCounter): void {
  const tmp = join(dir, `${COUNTER_FILE}.tmp`);
  writeFileSync(tmp, JSON.stringify(c));
  const fd = openSync(tmp, 'r+');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, COUNTER_FILE));
}

/** The app name in an image's header, or null when the header does not parse (the load then says why). */
function appNameOf(bytes: Uint8Array): string | null {
  const h = decodeHeader(bytes, { maxCode: 0xffffffff, maxRodata: 0xffffffff, maxBss: 0xffffffff });
  return h.ok ? h.value.appName : null;
}

async function drain(source: ImageSourceTransport): Promise<{ images: SourcedImage[]; problems: SourceProblem[] }> {
  const images: SourcedImage[] = [];
  const problems: SourceProblem[] = [];
  const off = source.receive((m: SourceDelivery) => (m.kind === 'image' ? images.push(m.image) : problems.push(m.problem)));
  try {
    await source.open();
  } catch (e) {
    problems.push({ source: source.name, message: (e as Error).message });
  } finally {
    off();
    await source.close();
  }
  return { images, problems };
}

export async function bootDevice(opts: BootOptions): Promise<BootReport> {
  const { device, events } = opts;
  const engine = device.engine;
  const counter = readCounter(opts.stateDir);
  const report: BootReport = { attempt: counter.attempts + 1, restored: null, loaded: [], failed: [], problems: [], halted: false, ok: false, cancelConfirm: () => {} };
  const emit = (type: 'boot.attempt' | 'boot.source' | 'boot.failed' | 'boot.alert', data: Record<string, unknown>) =>
    events.emit({ type, pid: null, phase: 'boot', data: { device: device.name, ...data } });

  if (counter.consecutiveFailures >= opts.maxFailedBoots) {
    report.halted = true;
    emit('boot.alert', { reason: 'too_many_failed_boots', consecutive_failures: counter.consecutiveFailures, limit: opts.maxFailedBoots });
    return report;
  }
  // Count the attempt before trying it: a crash mid-boot is a failed boot.
  writeCounter(opts.stateDir, { consecutiveFailures: counter.consecutiveFailures + 1, attempts: counter.attempts + 1 });
  emit('boot.attempt', { attempt: report.attempt, consecutive_failures: counter.consecutiveFailures });

  // 1. The committed image; on failure, the known-good one.
  let restored = engine.restore();
  if (!restored.ok) {
    report.failed.push({ source: 'store:active', error: `${restored.error.code}:${restored.error.reason}` });
    const rb = await engine.rollback('boot_failed');
    if (rb.ok) restored = engine.restore();
  }
  if (restored.ok) report.restored = restored.value;

  // 2. Sources in priority order, each image through the device's intake (the same rules as a
  // master's transfer: an image the device already runs is skipped, one of a running app updates it).
  const intake = device.intake;
  for (const source of opts.sources) {
    const { images, problems } = await drain(source);
    report.problems.push(...problems);
    let loaded = 0;
    for (const img of images) {
      const named = img.expected?.appName ? appNameOf(img.bytes) : null;
      if (named !== null && named !== img.expected!.appName) {
        report.failed.push({ source: img.source, error: `EBADMSG:app_name_mismatch (image says "${named}", manifest "${img.expected!.appName}")` });
        continue;
      }
      const r = await intake.load(img.bytes, {
        source: img.source, persist: img.persist, trial: true, confirmWindowMs: opts.confirmWindowMs, bootPriority: img.bootPriority,
        ...(img.expected?.version ? { version: img.expected.version } : {}),
      });
      if (!r.ok) {
        report.failed.push({ source: img.source, error: `${r.error.code}:${r.error.reason}` });
        continue;
      }
      if (r.value.outcome === 'current') continue;
      loaded++;
      report.loaded.push({ source: img.source, pid: r.value.task.pid, appName: r.value.task.appName });
    }
    emit('boot.source', { source: source.name, images: images.length, loaded, problems: problems.length });
  }

  report.ok = report.failed.length === 0;
  if (!report.ok) {
    emit('boot.failed', { attempt: report.attempt, failed: report.failed });
    if (counter.consecutiveFailures + 1 >= opts.maxFailedBoots) {
      emit('boot.alert', { reason: 'too_many_failed_boots', consecutive_failures: counter.consecutiveFailures + 1, limit: opts.maxFailedBoots });
    }
    return report;
  }
  writeCounter(opts.stateDir, { consecutiveFailures: 0, attempts: counter.attempts + 1 });

  // 3. Tested images are confirmed by the intake once they have stayed up for the window, else rolled back.
  report.cancelConfirm = () => intake.dispose();
  return report;
}
