import { MAILBOX_MODE_ALL, MAILBOX_MODES } from './constants.js';

/**
 * Mailbox modes appear in images as a number (`mode_mask`) or as a `|`-separated list of names
 * (`"RDWR|FANOUT_DROP"`, `"rw|tap"`). Names are case-insensitive; the short forms are the ones the HSX
 * toolchain's pragmas accept.
 */
const MODE_NAMES: Record<string, number> = {
  rdonly: MAILBOX_MODES.RDONLY, ro: MAILBOX_MODES.RDONLY, r: MAILBOX_MODES.RDONLY, read: MAILBOX_MODES.RDONLY,
  wronly: MAILBOX_MODES.WRONLY, wo: MAILBOX_MODES.WRONLY, w: MAILBOX_MODES.WRONLY, write: MAILBOX_MODES.WRONLY,
  rdwr: MAILBOX_MODES.RDWR, rw: MAILBOX_MODES.RDWR, readwrite: MAILBOX_MODES.RDWR,
  tap: MAILBOX_MODES.TAP,
  fanout: MAILBOX_MODES.FANOUT,
  fanout_drop: MAILBOX_MODES.FANOUT_DROP, drop: MAILBOX_MODES.FANOUT_DROP,
  fanout_block: MAILBOX_MODES.FANOUT_BLOCK, block: MAILBOX_MODES.FANOUT_BLOCK,
};

/** Returns the mode mask, or a string naming what is unknown. */
export function parseModeText(text: string): { ok: true; mask: number } | { ok: false; unknown: string } {
  let mask = 0;
  const tokens = text.split('|').map((t) => t.trim());
  for (const token of tokens) {
    const key = token.toLowerCase().replace(/^hsx_mbx_mode_/, '');
    const bits = MODE_NAMES[key];
    if (bits !== undefined) {
      mask |= bits;
      continue;
    }
    if (/^(0x[0-9a-f]+|[0-9]+)$/i.test(token)) {
      const n = Number(token);
      if (n > MAILBOX_MODE_ALL) return { ok: false, unknown: token };
      mask |= n;
      continue;
    }
    return { ok: false, unknown: token };
  }
  return { ok: true, mask };
}

export function isKnownModeMask(mask: number): boolean {
  return Number.isInteger(mask) && mask >= 0 && (mask & ~MAILBOX_MODE_ALL) === 0;
}

/** Human form for tables: `RDWR|FANOUT_DROP`. */
export function formatMode(mask: number): string {
  const names: string[] = [];
  let rest = mask;
  if ((rest & MAILBOX_MODES.RDWR) === MAILBOX_MODES.RDWR) {
    names.push('RDWR');
    rest &= ~MAILBOX_MODES.RDWR;
  }
  for (const [name, bit] of Object.entries(MAILBOX_MODES)) {
    if (name !== 'RDWR' && (rest & bit) === bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest) names.push(`0x${rest.toString(16)}`);
  return names.length ? names.join('|') : '0';
}
