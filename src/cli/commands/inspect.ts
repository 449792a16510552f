import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { parseImage } from '../../hxe/parse.js';
import { formatMode } from '../../hxe/mailbox-mode.js';
import type { F16, HxeError, HxeImage } from '../../hxe/types.js';

/**
 * `hsx-gateway inspect FILE [--json]`: verify an image and describe it. Exit 0 valid, 1 invalid (or
 * unreadable), 2 usage. The JSON shape is a contract with scripts (issue 2):
 * `{"ok":true,"header":{…},"values":[…],"commands":[…],"mailboxes":[…],"warnings":[…]}` or
 * `{"ok":false,"error":{"code","reason","message","offset"}}`.
 */
export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('verify an .hxe image and describe its header and metadata sections')
    .argument('<file>', 'the .hxe image')
    .option('--json', 'print the result as one JSON object')
    .option('--keys <dir>', 'trusted keys directory: check the signature trailer against it (docs/security.md)')
    .action(async (file: string, opts: { json?: boolean; keys?: string }) => {
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(readFileSync(file));
      } catch (e) {
        const error = { code: 'EIO', reason: 'unreadable', message: `${file}: ${(e as Error).message}` };
        if (opts.json) process.stdout.write(`${JSON.stringify({ ok: false, error })}\n`);
        else process.stderr.write(`inspect: ${error.message}\n`);
        process.exitCode = 1;
        return;
      }
      const r = parseImage(bytes);
      // signature trailer and status (src/cli/commands/verify.ts); an altered or revoked image fails inspect
      // (the signature code and the key loader are imported only for a signed image or --keys: start-up, bench/cli.ts)
      const sig = r.ok && (r.value.trailer || opts.keys !== undefined)
        ? (await import('./verify.js')).signatureReport(r.value, bytes, opts.keys)
        : null;
      if (sig?.failed) process.exitCode = 1;
      if (opts.json) {
        // an altered or revoked image: the description stays, and ok/error say it failed (the one error shape)
        const sigFailed = sig?.failed ? {
          ok: false,
          error: { code: 'EBADSIG', reason: String((sig.json['signature'] as Record<string, unknown> | undefined)?.['status'] ?? 'signature_failed'), message: `${file}: ${sig.text.trim()}` },
        } : {};
        process.stdout.write(`${JSON.stringify(r.ok ? { ...imageJson(r.value), ...sig?.json, ...sigFailed } : { ok: false, error: errorJson(r.error) })}\n`);
      } else if (r.ok) {
        process.stdout.write(describeImage(file, r.value) + (sig?.text ?? ''));
      } else {
        process.stderr.write(`${file}: INVALID ${describeError(r.error)}\n`);
      }
      if (!r.ok) process.exitCode = 1;
    });
}

export function describeError(e: HxeError): string {
  return `${e.code} ${e.reason}${e.offset !== undefined ? ` at offset 0x${e.offset.toString(16)}` : ''}: ${e.message}`;
}

export function errorJson(e: HxeError): Record<string, unknown> {
  return { code: e.code, reason: e.reason, message: e.message, ...(e.offset !== undefined ? { offset: e.offset } : {}) };
}

/** JSON has no ±Infinity/NaN; write them as the reference does, as strings. */
const jsonFloat = (v: number): number | string => (Number.isFinite(v) ? v : Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity');
const f16Json = (f: F16): { raw: number; value: number | string } => ({ raw: f.raw, value: jsonFloat(f.value) });

export function imageJson(img: HxeImage): Record<string, unknown> {
  const h = img.header;
  return {
    ok: true,
    header: {
      version: h.version, flags: h.flags, entry: h.entry, codeLen: h.codeLen, roLen: h.roLen, bssSize: h.bssSize,
      reqCaps: h.reqCaps, crc32: h.crc32, appName: h.appName, metaOffset: h.metaOffset, metaCount: h.metaCount,
      allowMultipleInstances: h.allowMultipleInstances,
    },
    values: img.values.map((v) => ({
      group: v.group, id: v.id, flags: v.flags, auth: v.auth, init: f16Json(v.init), name: v.name, unit: v.unit,
      epsilon: f16Json(v.epsilon), min: f16Json(v.min), max: f16Json(v.max), persistKey: v.persistKey, groupName: v.groupName,
    })),
    commands: img.commands.map((c) => ({
      group: c.group, id: c.id, flags: c.flags, auth: c.auth, handlerOffset: c.handlerOffset, name: c.name, help: c.help, groupName: c.groupName,
    })),
    mailboxes: img.mailboxes.map((m) => ({ target: m.target, capacity: m.capacity, mode: m.mode, ...(m.extra ? { extra: m.extra } : {}) })),
    warnings: img.warnings.map((w) => ({ reason: w.reason, message: w.message, ...(w.offset !== undefined ? { offset: w.offset } : {}) })),
  };
}

/** Plain aligned columns; no colour, so the output pastes into tickets and diffs cleanly. */
export function table(headers: string[], rows: Array<Array<string | number | null>>): string {
  const cells = rows.map((r) => r.map((c) => (c === null ? '-' : String(c))));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n') + '\n';
}

const hex = (n: number, width = 8): string => `0x${n.toString(16).padStart(width, '0')}`;
const f16Text = (f: F16): string => `${f.value} (${hex(f.raw, 4)})`;

export function describeImage(file: string, img: HxeImage): string {
  const h = img.header;
  const out: string[] = [`${file}: OK, HXE v${h.version}, ${img.size} bytes\n`];
  out.push(table(['field', 'value'], [
    ['version', h.version],
    ['flags', `${hex(h.flags, 4)}${h.manifestPresent ? ' manifest' : ''}${h.allowMultipleInstances ? ' multi-instance' : ' single-instance'}`],
    ['entry', hex(h.entry)],
    ['code_len', h.codeLen],
    ['ro_len', h.roLen],
    ['bss_size', h.bssSize],
    ['req_caps', hex(h.reqCaps)],
    ['crc32', hex(h.crc32)],
    ['app_name', h.appName || null],
    ['meta_offset', h.metaOffset],
    ['meta_count', h.metaCount],
  ]));
  if (img.sections.length) {
    out.push('\nsections\n');
    out.push(table(['type', 'offset', 'size', 'entries'], img.sections.map((s) => [s.type, s.offset, s.size, s.entryCount])));
  }
  if (img.values.length) {
    out.push('\n.value\n');
    out.push(table(['group', 'id', 'name', 'unit', 'flags', 'auth', 'init', 'min', 'max', 'epsilon', 'persist', 'group_name'],
      img.values.map((v) => [v.group, v.id, v.name, v.unit, hex(v.flags, 2), v.auth, f16Text(v.init), f16Text(v.min), f16Text(v.max), f16Text(v.epsilon), v.persistKey, v.groupName])));
  }
  if (img.commands.length) {
    out.push('\n.cmd\n');
    out.push(table(['group', 'id', 'name', 'flags', 'auth', 'handler', 'help', 'group_name'],
      img.commands.map((c) => [c.group, c.id, c.name, hex(c.flags, 2), c.auth, hex(c.handlerOffset), c.help, c.groupName])));
  }
  if (img.mailboxes.length) {
    out.push(`\n.mailbox (${img.mailboxFormat ?? 'json'})\n`);
    out.push(table(['target', 'capacity', 'mode', 'extra'],
      img.mailboxes.map((m) => [m.target, m.capacity === 0 ? '0 (default)' : m.capacity, formatMode(m.mode), m.extra ? JSON.stringify(m.extra) : null])));
  }
  if (img.warnings.length) {
    out.push('\nwarnings\n');
    out.push(table(['reason', 'offset', 'message'], img.warnings.map((w) => [w.reason, w.offset ?? null, w.message])));
  }
  return out.join('');
}
