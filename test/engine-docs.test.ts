/**
 * docs/provisioning.md stays true to the code: its transition table is the engine's, and every
 * error reason the engine can produce is in its error table.
 */
import test from 'ava';
import { readFileSync, readdirSync } from 'node:fs';
import { TRANSITIONS, type LoadState } from '../src/engine/index.js';

const doc = readFileSync(new URL('../docs/provisioning.md', import.meta.url), 'utf8');

test('the documented transition table is the engine\'s', (t) => {
  const section = doc.slice(doc.indexOf('| from | allowed to |'));
  const rows = section.split('\n').slice(2).filter((l) => l.startsWith('| ')).slice(0, 6);
  const documented: Record<string, string[]> = {};
  for (const row of rows) {
    const [from, to] = row.split('|').slice(1, 3).map((c) => c.trim());
    documented[from!] = to!.split(',').map((s) => s.trim());
  }
  const actual: Record<string, string[]> = {};
  for (const [from, tos] of Object.entries(TRANSITIONS) as Array<[LoadState, readonly LoadState[]]>) actual[from] = [...tos];
  t.deepEqual(documented, actual);
});

test('every error reason the engine produces is documented', (t) => {
  const dir = new URL('../src/engine/', import.meta.url);
  const reasons = new Set<string>();
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.ts'))) {
    const src = readFileSync(new URL(f, dir), 'utf8');
    for (const m of src.matchAll(/engineError\(\s*(?:'[A-Z]+'|[^,()]+),\s*(?:'\w+'|\w+),\s*'(\w+)'/g)) reasons.add(m[1]!);
    for (const m of src.matchAll(/new StoreError\('[A-Z]+', '(\w+)'/g)) reasons.add(m[1]!);
    for (const m of src.matchAll(/full\('\w+', '(\w+)'/g)) reasons.add(m[1]!);
  }
  t.true(reasons.size >= 40, `found ${reasons.size} reasons`);
  const table = doc.slice(doc.indexOf('## Errors'), doc.indexOf('## Events'));
  const missing = [...reasons].filter((r) => !table.includes(`\`${r}\``));
  t.deepEqual(missing, []);
});

test('every event type the engine emits is documented', (t) => {
  const src = readFileSync(new URL('../src/engine/engine.ts', import.meta.url), 'utf8');
  const types = new Set([...src.matchAll(/emit\('([\w.]+)'/g)].map((m) => m[1]!));
  types.add('value.restored');
  types.add('value.defaulted');
  const table = doc.slice(doc.indexOf('## Events'));
  t.true(types.size >= 9);
  t.deepEqual([...types].filter((ty) => !table.includes(`\`${ty}\``)), []);
});
