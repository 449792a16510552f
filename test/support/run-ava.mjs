#!/usr/bin/env node
// Runs ava with TAP output, echoes it, and ends with the plain summary line CI counts:
// "N passed, N failed[, N skipped]". ava's own exit code is kept.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

const args = ['ava', '--tap', ...process.argv.slice(2)];
const child = spawn('npx', args, { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
let passed = 0, failed = 0, skipped = 0, todo = 0;
let sawPlan = false;
const rl = createInterface({ input: child.stdout });
rl.on('line', (line) => {
  process.stdout.write(line + '\n');
  if (/^ok \d+/.test(line)) {
    if (/# SKIP/i.test(line)) skipped++;
    else if (/# TODO/i.test(line)) todo++;
    else passed++;
  } else if (/^not ok \d+/.test(line)) {
    if (/# TODO/i.test(line)) todo++;
    else failed++;
  } else if (/^1\.\.\d+/.test(line)) sawPlan = true;
});
child.on('close', (code, signal) => {
  let exit = code ?? 1;
  if (signal) exit = 1;
  if (!sawPlan && passed + failed === 0) {
    console.log('ava produced no TAP results');
    exit = exit || 1;
  }
  if (failed > 0 && exit === 0) exit = 1;
  const extra = skipped + todo > 0 ? `, ${skipped + todo} skipped` : '';
  console.log(`${passed} passed, ${failed} failed${extra}`);
  process.exit(exit);
});
