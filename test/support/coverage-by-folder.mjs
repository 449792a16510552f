#!/usr/bin/env node
// Prints line coverage per src/ folder from c8's json-summary, and fails under the 80% bar for src/.
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const summary = JSON.parse(readFileSync('coverage/coverage-summary.json', 'utf8'));
const folders = new Map();
for (const [file, data] of Object.entries(summary)) {
  if (file === 'total') continue;
  const rel = relative(process.cwd(), file);
  const folder = rel.split('/').slice(0, 2).join('/');
  const f = folders.get(folder) ?? { covered: 0, total: 0 };
  f.covered += data.lines.covered;
  f.total += data.lines.total;
  folders.set(folder, f);
}
for (const [folder, f] of [...folders].sort()) {
  const pct = f.total ? (100 * f.covered) / f.total : 100;
  console.log(`${folder.padEnd(20)} ${pct.toFixed(1).padStart(6)}%  (${f.covered}/${f.total} lines)`);
}
const total = summary.total.lines.pct;
console.log(`${'src (all)'.padEnd(20)} ${Number(total).toFixed(1).padStart(6)}%`);
if (total < 80) {
  console.error(`line coverage ${total}% is under the 80% bar`);
  process.exit(1);
}
