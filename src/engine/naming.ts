/**
 * App-name policy, as the HSX executive applies it (scenarios.json in the reference vectors):
 * the first instance keeps the base name (trimmed to 31 bytes); with `allow_multiple_instances`
 * set, later ones are `name_#0`, `name_#1`, … with the base trimmed so the whole name still fits;
 * without it, a second load of the same base name is refused (`app_exists`).
 */
const utf8 = new TextEncoder();

/** The longest prefix of `s` that fits in `maxBytes` UTF-8 bytes, never splitting a character. */
export function trimUtf8(s: string, maxBytes: number): string {
  if (utf8.encode(s).length <= maxBytes) return s;
  let out = '';
  let bytes = 0;
  for (const ch of s) {
    const n = utf8.encode(ch).length;
    if (bytes + n > maxBytes) break;
    out += ch;
    bytes += n;
  }
  return out;
}

/**
 * Name for an image whose header carries none: the file stem of a `file:PATH` source or of the
 * entry of an `sd:MANIFEST#ENTRY` source, else `stream_<pid>`.
 */
export function fallbackAppName(source: string, pid: number): string {
  let path: string | null = null;
  if (source.startsWith('file:')) path = source.slice(5);
  else if (source.startsWith('sd:') && source.includes('#')) path = source.slice(source.lastIndexOf('#') + 1);
  if (path !== null) {
    const base = path.split(/[\\/]/).pop() ?? '';
    const dot = base.lastIndexOf('.');
    const stem = dot > 0 ? base.slice(0, dot) : base;
    if (stem.trim() !== '') return stem;
  }
  return `stream_${pid}`;
}

export interface InstanceName {
  appName: string;
  appNameBase: string;
}

/** Returns the instance name, or null when the name is taken and multiple instances are not allowed. */
export function assignInstanceName(
  base: string,
  allowMultiple: boolean,
  taken: (name: string) => boolean,
  maxBytes = 31,
): InstanceName | null {
  const bare = trimUtf8(base, maxBytes);
  if (!taken(bare)) return { appName: bare, appNameBase: base };
  if (!allowMultiple) return null;
  for (let n = 0; ; n++) {
    const suffix = `_#${n}`;
    const name = trimUtf8(base, maxBytes - suffix.length) + suffix;
    if (!taken(name)) return { appName: name, appNameBase: base };
  }
}
