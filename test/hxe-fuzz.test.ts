import test from 'ava';
import fc from 'fast-check';
import { parseImage } from '../src/hxe/index.js';
import { checkInput, checkSpec, inputArb, specArb } from './hxe-fuzz-cases.js';

/**
 * Bounded fuzz run (the open-ended one is `npm run fuzz`). A failure prints fast-check's shrunk
 * counterexample and seed, so it can be replayed.
 */
test('parser + streaming verifier: 4000 random and mutated images give an image or a typed error, the same both ways', (t) => {
  t.timeout(120_000);
  fc.assert(
    fc.property(inputArb, ({ bytes, chunks }) => {
      const problem = checkInput(bytes, chunks);
      if (problem) throw new Error(problem);
      return true;
    }),
    { numRuns: 4000 },
  );
  t.pass();
});

test('the mutations reach deep: a fixed-seed sample hits the header, layout, section and string verdicts and valid images', (t) => {
  const seen = new Map<string, number>();
  for (const { bytes } of fc.sample(inputArb, { numRuns: 4000, seed: 20261126 })) {
    const r = parseImage(bytes);
    const key = r.ok ? 'OK' : r.error.reason;
    seen.set(key, (seen.get(key) ?? 0) + 1);
  }
  t.log(`${seen.size} distinct verdicts: ${[...seen.entries()].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k}=${n}`).join(' ')}`);
  for (const must of ['OK', 'crc_mismatch', 'truncated', 'code_too_large', 'meta_table_out_of_bounds', 'section_out_of_bounds', 'section_overlap', 'string_out_of_range', 'mailbox_json_invalid']) {
    t.true(seen.has(must), `fuzzer reaches ${must}`);
  }
  t.true(seen.size >= 18);
});

test('writer: 1000 random specs build, parse back and rebuild byte-identically', (t) => {
  t.timeout(120_000);
  fc.assert(
    fc.property(specArb, (spec) => {
      const problem = checkSpec(spec);
      if (problem) throw new Error(problem);
      return true;
    }),
    { numRuns: 1000 },
  );
  t.pass();
});
