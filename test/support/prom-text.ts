/**
 * A small parser of Prometheus' text exposition format (version 0.0.4), enough for the tests to read
 * `/metrics` as a scraper would: `# HELP` and `# TYPE` lines, samples `name{label="v",...} value
 * [timestamp]` with the format's escapes in label values (\\, \", \n). Anything else is an error that
 * names the line, so a malformed exposition fails the test instead of being half read.
 */
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromFamily {
  name: string;
  type: string | null;
  help: string | null;
}

export interface PromText {
  families: Map<string, PromFamily>;
  samples: PromSample[];
  /** The value of the one sample with this name whose labels include `labels`; undefined when none. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** Every sample of a name whose labels include `labels`. */
  all(name: string, labels?: Record<string, string>): PromSample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;

function parseValue(s: string, line: number): number {
  // Prometheus reads these as Go's ParseFloat does: case-insensitively (prom-client writes "Nan")
  const l = s.toLowerCase();
  if (l === '+inf' || l === 'inf') return Infinity;
  if (l === '-inf') return -Infinity;
  if (l === 'nan') return NaN;
  const v = Number(s);
  if (s === '' || Number.isNaN(v)) throw new Error(`metrics line ${line}: bad value "${s}"`);
  return v;
}

function parseLabels(text: string, line: number): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 0;
  for (;;) {
    while (text[i] === ' ' || text[i] === ',') i++;
    if (text[i] === '}') return { labels, rest: text.slice(i + 1) };
    const eq = text.indexOf('=', i);
    if (eq < 0) throw new Error(`metrics line ${line}: label without '='`);
    const key = text.slice(i, eq).trim();
    if (!NAME.test(key)) throw new Error(`metrics line ${line}: bad label name "${key}"`);
    if (text[eq + 1] !== '"') throw new Error(`metrics line ${line}: label value must be quoted`);
    let j = eq + 2;
    let v = '';
    for (;;) {
      const c = text[j];
      if (c === undefined) throw new Error(`metrics line ${line}: unterminated label value`);
      if (c === '"') break;
      if (c === '\\') {
        const n = text[j + 1];
        v += n === 'n' ? '\n' : n ?? '';
        j += 2;
        continue;
      }
      v += c;
      j++;
    }
    labels[key] = v;
    i = j + 1;
  }
}

export function parsePromText(text: string): PromText {
  const families = new Map<string, PromFamily>();
  const samples: PromSample[] = [];
  const fam = (name: string): PromFamily => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { name, type: null, help: null }));
    return f;
  };
  text.split('\n').forEach((raw, idx) => {
    const line = idx + 1;
    const l = raw.trim();
    if (l === '') return;
    if (l.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)\s*(.*)$/.exec(l);
      if (!m) return; // a plain comment
      const f = fam(m[2]!);
      if (m[1] === 'HELP') f.help = m[3] ?? '';
      else {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(m[3] ?? '')) throw new Error(`metrics line ${line}: unknown type "${m[3]}"`);
        f.type = m[3]!;
      }
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(.*)$/.exec(l);
    if (!m) throw new Error(`metrics line ${line}: not a sample: ${l.slice(0, 80)}`);
    let rest = m[2] ?? '';
    let labels: Record<string, string> = {};
    if (rest.startsWith('{')) ({ labels, rest } = parseLabels(rest.slice(1), line));
    const parts = rest.trim().split(/\s+/);
    if (parts.length < 1 || parts.length > 2) throw new Error(`metrics line ${line}: expected a value and an optional timestamp`);
    samples.push({ name: m[1]!, labels, value: parseValue(parts[0] ?? '', line) });
  });
  const matches = (s: PromSample, name: string, labels: Record<string, string>): boolean =>
    s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v);
  return {
    families,
    samples,
    all: (name, labels = {}) => samples.filter((s) => matches(s, name, labels)),
    value(name, labels = {}) {
      const hit = samples.filter((s) => matches(s, name, labels));
      if (hit.length > 1) throw new Error(`metrics: ${hit.length} samples of ${name} match ${JSON.stringify(labels)}`);
      return hit[0]?.value;
    },
  };
}
