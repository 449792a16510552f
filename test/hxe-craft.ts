/**
 * Test-only helpers to craft HXE images byte by byte (including malformed ones) without going through
 * the library's writer, so verdict tests don't trust the code under test to build their inputs.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';

export const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));

export function fixtureNames(): string[] {
  return readdirSync(FIXTURES).filter((f) => f.endsWith('.hxe')).sort();
}

export function fixture(name: string): Uint8Array {
  return new Uint8Array(readFileSync(`${FIXTURES}${name}`));
}

export function fixtureJson(name: string): any {
  return JSON.parse(readFileSync(`${FIXTURES}${name.replace(/\.hxe$/, '.json')}`, 'utf8'));
}

export const u32 = (b: Uint8Array, off: number, v: number): void => {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(off, v >>> 0);
};
export const u16 = (b: Uint8Array, off: number, v: number): void => {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint16(off, v);
};
export const rd32 = (b: Uint8Array, off: number): number => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off);

/** The reference CRC recipe, written independently of src/hxe/crc.ts. */
export function refCrc(b: Uint8Array): number {
  const hs = b[5] === 1 ? 32 : 96;
  return crc32(Buffer.concat([b.subarray(0, 0x1c), b.subarray(hs)])) >>> 0;
}

/** Recomputes and stores the CRC so a mutation is judged on its own, not as a CRC mismatch. */
export function fixCrc(b: Uint8Array): Uint8Array {
  u32(b, 0x1c, refCrc(b));
  return b;
}

export interface RawSection {
  type: number;
  payload: Uint8Array;
  count: number;
}

export interface RawImageOptions {
  version?: 1 | 2;
  flags?: number;
  entry?: number;
  code?: Uint8Array;
  rodata?: Uint8Array;
  bss?: number;
  reqCaps?: number;
  appName?: string;
  sections?: RawSection[];
  trailing?: Uint8Array;
}

/** Header + code + rodata + table + sections, laid out as the HSX linker does, CRC fixed. */
export function rawImage(o: RawImageOptions = {}): Uint8Array {
  const version = o.version ?? 2;
  const hs = version === 1 ? 32 : 96;
  const code = o.code ?? new Uint8Array([0x60, 0, 0, 0]);
  const ro = o.rodata ?? new Uint8Array(0);
  const secs = o.sections ?? [];
  const trailing = o.trailing ?? new Uint8Array(0);
  const roEnd = hs + code.length + ro.length;
  const tableEnd = roEnd + secs.length * 16;
  const total = tableEnd + secs.reduce((n, s) => n + s.payload.length, 0) + trailing.length;
  const b = new Uint8Array(total);
  u32(b, 0, 0x48535845);
  u16(b, 4, version);
  u16(b, 6, o.flags ?? (version === 2 ? 2 : 0));
  u32(b, 8, o.entry ?? 0);
  u32(b, 12, code.length);
  u32(b, 16, ro.length);
  u32(b, 20, o.bss ?? 0);
  u32(b, 24, o.reqCaps ?? 0);
  if (version === 2) {
    b.set(Buffer.from(o.appName ?? 'app', 'latin1'), 0x20);
    u32(b, 0x40, secs.length ? roEnd : 0);
    u32(b, 0x44, secs.length);
  }
  b.set(code, hs);
  b.set(ro, hs + code.length);
  let cursor = tableEnd;
  secs.forEach((s, i) => {
    const at = roEnd + i * 16;
    u32(b, at, s.type);
    u32(b, at + 4, cursor);
    u32(b, at + 8, s.payload.length);
    u32(b, at + 12, s.count);
    b.set(s.payload, cursor);
    cursor += s.payload.length;
  });
  b.set(trailing, cursor);
  return fixCrc(b);
}

/** One 20-byte .value entry + strings. `strings` are appended after the entries, offsets given explicitly. */
export function valueEntry(e: { group: number; id: number; flags?: number; auth?: number; init?: number; name?: number; unit?: number; eps?: number; min?: number; max?: number; persist?: number; groupName?: number }): Uint8Array {
  const b = new Uint8Array(20);
  b[0] = e.group; b[1] = e.id; b[2] = e.flags ?? 0; b[3] = e.auth ?? 0;
  u16(b, 4, e.init ?? 0); u16(b, 6, e.name ?? 0); u16(b, 8, e.unit ?? 0); u16(b, 10, e.eps ?? 0);
  u16(b, 12, e.min ?? 0); u16(b, 14, e.max ?? 0); u16(b, 16, e.persist ?? 0); u16(b, 18, e.groupName ?? 0);
  return b;
}

export function cmdEntry(e: { group: number; id: number; flags?: number; auth?: number; handler?: number; name?: number; help?: number; groupName?: number; reserved?: number }): Uint8Array {
  const b = new Uint8Array(16);
  b[0] = e.group; b[1] = e.id; b[2] = e.flags ?? 0; b[3] = e.auth ?? 0;
  u32(b, 4, e.handler ?? 0); u16(b, 8, e.name ?? 0); u16(b, 10, e.help ?? 0); u16(b, 12, e.reserved ?? 0); u16(b, 14, e.groupName ?? 0);
  return b;
}

export function legacyMailbox(nameOff: number, depth: number, flags: number, reservedByte = 0): Uint8Array {
  const b = new Uint8Array(16);
  u32(b, 0, nameOff); u16(b, 4, depth); u16(b, 6, flags); b[8] = reservedByte;
  return b;
}

export const cat = (...parts: Array<Uint8Array | string>): Uint8Array =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p))));
