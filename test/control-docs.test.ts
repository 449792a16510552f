/**
 * docs/executive_protocol.md is executable: every ```jsonl block is replayed against a real server
 * over TCP, request by request, and every documented reply must match (see the doc's §0 notation).
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { sha256Hex } from '../src/gateway/control/auth.js';
import { fixture, startHarness, type Harness, type LineClient } from './control-harness.js';

const doc = readFileSync(new URL('../docs/executive_protocol.md', import.meta.url), 'utf8');
const fixturesDir = fileURLToPath(new URL('./fixtures/', import.meta.url));

interface Block { tokens: boolean; lines: string[] }
function blocks(): Block[] {
  const out: Block[] = [];
  const re = /```jsonl( tokens)?\n([\s\S]*?)```/g;
  for (let m = re.exec(doc); m; m = re.exec(doc)) out.push({ tokens: !!m[1], lines: (m[2] as string).split('\n').filter((l) => l.trim()) });
  return out;
}

type Vars = Map<string, unknown>;

function substitute(v: unknown, vars: Vars): unknown {
  if (typeof v === 'string' && v.startsWith('$')) {
    if (!vars.has(v)) throw new Error(`variable ${v} used before it was captured`);
    return vars.get(v);
  }
  if (typeof v === 'string' && v.startsWith('@')) return Buffer.from(fixture(v.slice(1))).toString('base64');
  if (Array.isArray(v)) return v.map((x) => substitute(x, vars));
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, substitute(x, vars)]));
  return v;
}

/** Returns a description of the first mismatch, or null. */
function mismatch(expected: unknown, actual: unknown, vars: Vars, path = '$'): string | null {
  if (expected === '…') return null;
  if (typeof expected === 'string' && expected.startsWith('$')) {
    if (vars.has(expected)) return vars.get(expected) === actual ? null : `${path}: ${expected}=${JSON.stringify(vars.get(expected))}, got ${JSON.stringify(actual)}`;
    vars.set(expected, actual);
    return null;
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) return `${path}: expected ${expected.length} items, got ${JSON.stringify(actual)}`;
    for (let i = 0; i < expected.length; i++) {
      const m = mismatch(expected[i], actual[i], vars, `${path}[${i}]`);
      if (m) return m;
    }
    return null;
  }
  if (expected && typeof expected === 'object') {
    if (!actual || typeof actual !== 'object' || Array.isArray(actual)) return `${path}: expected an object, got ${JSON.stringify(actual)}`;
    const e = expected as Record<string, unknown>;
    const a = actual as Record<string, unknown>;
    const open = '…' in e;
    for (const k of Object.keys(e)) {
      if (k === '…') continue;
      if (!(k in a)) return `${path}.${k}: missing`;
      const m = mismatch(e[k], a[k], vars, `${path}.${k}`);
      if (m) return m;
    }
    if (!open) {
      const extra = Object.keys(a).filter((k) => !(k in e));
      if (extra.length) return `${path}: undocumented keys ${extra.join(', ')}`;
    }
    return null;
  }
  return Object.is(expected, actual) ? null : `${path}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`;
}

async function runBlocks(h: Harness, list: Block[], t: { is(a: unknown, b: unknown, m?: string): void; true(v: boolean, m?: string): void }): Promise<number> {
  const conns = new Map<string, LineClient>();
  const conn = async (name: string) => {
    let c = conns.get(name);
    if (!c) conns.set(name, (c = await h.client()));
    return c;
  };
  const vars: Vars = new Map();
  let checked = 0;
  for (const b of list) {
    for (const line of b.lines) {
      const m = /^([A-Z])([<>]) (.*)$/.exec(line);
      if (!m) throw new Error(`doc line not in the A>/A< form: ${line}`);
      const [, name, dir, body] = m as unknown as [string, string, string, string];
      const c = await conn(name);
      if (dir === '>') {
        let text = body;
        try {
          text = JSON.stringify(substitute(JSON.parse(body), vars));
        } catch {
          /* a deliberately malformed request is sent as written */
        }
        c.sendRaw(`${text}\n`);
        continue;
      }
      const got = await c.next();
      if (body === '<EOF>') {
        t.is(got, null, `${line}: expected EOF`);
      } else {
        t.true(got !== null, `${line}: no reply`);
        const problem = mismatch(JSON.parse(body), JSON.parse(got ?? 'null'), vars);
        t.is(problem, null, `documented: ${body}\nactual:     ${got}`);
      }
      checked++;
    }
  }
  return checked;
}

test('every documented exchange happens exactly so', async (t) => {
  t.timeout(30_000);
  const all = blocks();
  t.true(all.length >= 10, 'the doc has its examples');
  const h = await startHarness({ imagesDir: fixturesDir });
  t.teardown(() => h.close());
  const n = await runBlocks(h, all.filter((b) => !b.tokens), t);
  t.log(`${n} documented replies checked`);
  const cmds = new Set([...doc.matchAll(/"cmd":"([a-z.]+)"/g)].map((m) => m[1]));
  for (const c of ['ping', 'info', 'ps', 'load', 'exec', 'session.open', 'session.keepalive', 'session.close', 'events.subscribe', 'events.ack',
    'events.unsubscribe', 'provision.load', 'provision.begin', 'provision.write', 'provision.end', 'provision.abort', 'provision.status',
    'provision.persist', 'provision.activate', 'provision.unload', 'auth']) t.true(cmds.has(c), `${c} has an example`);
});

test('the access-control examples, on a server with the documented tokens', async (t) => {
  const tokens = [
    { name: 'dash', role: 'viewer' as const, sha256: sha256Hex('viewer-secret-1') },
    { name: 'ci', role: 'operator' as const, sha256: sha256Hex('operator-secret-2') },
    { name: 'ops', role: 'admin' as const, sha256: sha256Hex('admin-secret-3') },
  ];
  const h = await startHarness({ tokens, imagesDir: fixturesDir });
  t.teardown(() => h.close());
  const n = await runBlocks(h, blocks().filter((b) => b.tokens), t);
  t.true(n >= 5);
  const denied = h.logs.find((l) => l['audit'] === true && l['cmd'] === 'provision.unload');
  // the audit line has the documented fields
  const documented = JSON.parse(/```json\n([\s\S]*?)```/.exec(doc)![1]!.replace(/\n\s*/g, ' ')) as Record<string, unknown>;
  for (const k of Object.keys(documented)) t.true(denied !== undefined && k in denied, `audit line has ${k}`);
  t.is(denied?.['verdict'], 'denied');
  t.is(denied?.['who'], 'ci');
});
