/**
 * What a simulated device says when it starts: the damaged state its stores found (each a
 * `boot.alert`) and the committed image it runs again. The CAN and UART device commands both start
 * through here, so a restarted device says the same `restored …` line whichever link it listens on.
 */
import type { ProvisioningEngine } from '../engine/index.js';
import type { BootAlert } from '../persist/image-store.js';

export type BootLine =
  | { kind: 'alert'; alert: BootAlert; text: string }
  | { kind: 'restored'; pid: number; appName: string; version: string; sha256: string; text: string }
  | { kind: 'restore_failed'; error: { code: string; where: string; reason: string; message: string }; text: string };

/** Runs the image the device's flash holds again (every check repeated) and reports, alerts first. */
export function restoreAtBoot(engine: ProvisioningEngine, alerts: readonly BootAlert[]): BootLine[] {
  const lines: BootLine[] = alerts.map((alert) => ({ kind: 'alert', alert, text: `BOOT ALERT ${alert.reason}: ${alert.message}` }));
  const restored = engine.restore();
  if (!restored.ok) {
    const { code, where, reason, message } = restored.error;
    lines.push({ kind: 'restore_failed', error: { code, where, reason, message }, text: `restore failed: ${code} ${reason} (${message})` });
  } else if (restored.value) {
    const t = restored.value;
    lines.push({ kind: 'restored', pid: t.pid, appName: t.appName, version: t.appVersion, sha256: t.sha256, text: `restored ${t.appName} (pid ${t.pid})` });
  }
  return lines;
}
