/**
 * Open-ended fuzzing of the HXE parser, the streaming verifier and the writer (the bounded run is in
 * test/hxe-fuzz.test.ts; the properties are in test/hxe-fuzz-cases.ts).
 *
 *   npm run fuzz -- --seconds 60        (default 10; prints one JSON line per batch and a summary)
 *
 * On a counterexample it prints it (with the seed to replay) and exits 1.
 */
import fc from 'fast-check';
import { checkInput, checkSpec, inputArb, specArb } from '../test/hxe-fuzz-cases.js';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isFinite(v) || v <= 0) {
    process.stderr.write(`fuzz: --${name} needs a positive number\n`);
    process.exit(2);
  }
  return v;
}

const seconds = arg('seconds', 10);
const batch = arg('batch', 2000);
const started = performance.now();
const deadline = started + seconds * 1000;
let total = 0;
let specs = 0;

const inputProperty = fc.property(inputArb, ({ bytes, chunks }) => {
  const problem = checkInput(bytes, chunks);
  if (problem) throw new Error(problem);
});
const specProperty = fc.property(specArb, (spec) => {
  const problem = checkSpec(spec);
  if (problem) throw new Error(problem);
});

while (performance.now() < deadline) {
  const seed = (Math.random() * 2 ** 31) | 0;
  const t0 = performance.now();
  const r = fc.check(inputProperty, { numRuns: batch, seed });
  const s = fc.check(specProperty, { numRuns: Math.max(1, batch / 10), seed });
  const dt = (performance.now() - t0) / 1000;
  for (const res of [r, s]) {
    if (res.failed) {
      process.stdout.write(`${JSON.stringify({ fuzz: 'hxe', failed: true, seed: res.seed, path: res.counterexamplePath, counterexample: String(res.counterexample?.[0] && JSON.stringify(res.counterexample[0], (_k, v) => (v instanceof Uint8Array ? Buffer.from(v).toString('hex') : v))), error: String(res.errorInstance) })}\n`);
      process.exit(1);
    }
  }
  total += r.numRuns;
  specs += s.numRuns;
  process.stdout.write(`${JSON.stringify({ fuzz: 'hxe', seed, cases: r.numRuns + s.numRuns, casesPerSecond: Math.round((r.numRuns + s.numRuns) / dt) })}\n`);
}
const elapsed = (performance.now() - started) / 1000;
process.stdout.write(`${JSON.stringify({ fuzz: 'hxe', summary: true, seconds: Number(elapsed.toFixed(2)), imageCases: total, specCases: specs, casesPerSecond: Math.round((total + specs) / elapsed), failures: 0 })}\n`);
