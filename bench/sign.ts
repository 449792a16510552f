/**
 * Cost of signature verification for a 64 KiB image, against the CRC-only verification of the
 * same image in the same process (a ratio, because these machines are noisy).
 *
 *   npx tsx bench/sign.ts
 *
 * One JSON object per line (medians over interleaved rounds; ratios taken within each round):
 *   crc32            hxeCrc32 over the file alone
 *   verify_crc_only  parseImage of the unsigned image (header, layout, sections, CRC): the baseline
 *   verify_signed    parseImage of the signed image + SHA-256 + Ed25519 verify (what the policy gate adds)
 *   signature_only   verifySignature alone on the parsed signed image
 *   sign             signImage (parse, SHA-256, Ed25519 sign, CRC over the whole file)
 */
import { generateKeyPairSync } from 'node:crypto';
import { buildImage } from '../src/hxe/build.js';
import { hxeCrc32 } from '../src/hxe/crc.js';
import { parseImage } from '../src/hxe/parse.js';
import { keyIdOf, signImage, verifySignature, type TrustedKeys } from '../src/hxe/signature.js';
import { TRAILER_SIZE } from '../src/hxe/trailer.js';

const SIZE = 64 * 1024;
const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted: TrustedKeys = { keys: new Map([[keyIdOf(publicKey), { name: 'bench', publicKey }]]), revoked: new Set() };

// 64 KiB in total once signed: header 96 + code + rodata + a .value section + trailer 148
const code = new Uint8Array(0x8000).map((_, i) => (i * 31) & 0xff);
const build = (roLen: number) => buildImage({
  appName: 'bench_64k', code, rodata: new Uint8Array(roLen).fill(0x5a), values: [{ group: 1, id: 1, name: 'v', init: 1 }],
});
const first = build(0x7000);
if (!first.ok) throw new Error(first.error.message);
// size the rodata so that the signed file is exactly 64 KiB
const built = build(0x7000 + SIZE - TRAILER_SIZE - first.value.length);
if (!built.ok) throw new Error(built.error.message);
const unsigned = built.value;
const s = signImage(unsigned, privateKey, { version: { major: 1, minor: 0, patch: 0, build: 0 }, securityCounter: 1 });
if (!s.ok) throw new Error(s.error.message);
const signed = s.value.bytes;

/** Runs `fn` for at least `minMs` and returns µs per call. */
function measureOnce(fn: () => unknown, minMs: number): { iterations: number; usPerOp: number } {
  let iterations = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < minMs) {
    for (let i = 0; i < 5; i++) fn();
    iterations += 5;
    elapsed = Number(process.hrtime.bigint() - start) / 1e6;
  }
  return { iterations, usPerOp: (elapsed * 1000) / iterations };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

/**
 * The machine is shared and its load changes second by second, so the cases are measured in
 * interleaved rounds (each round: every case for ~`roundMs`), and each case's ratio to the
 * baseline is taken within a round; the medians over the rounds are reported.
 */
function measureAll(cases: Record<string, () => unknown>, baseline: string, rounds = 9, roundMs = 60):
  Record<string, { iterations: number; usPerOp: number; ratio: number }> {
  for (const fn of Object.values(cases)) for (let i = 0; i < 10; i++) fn(); // warm-up
  const per: Record<string, { us: number[]; ratios: number[]; iterations: number }> = {};
  for (const name of Object.keys(cases)) per[name] = { us: [], ratios: [], iterations: 0 };
  for (let r = 0; r < rounds; r++) {
    const round: Record<string, number> = {};
    for (const [name, fn] of Object.entries(cases)) {
      const m = measureOnce(fn, roundMs);
      round[name] = m.usPerOp;
      per[name]!.us.push(m.usPerOp);
      per[name]!.iterations += m.iterations;
    }
    for (const name of Object.keys(cases)) per[name]!.ratios.push(round[name]! / round[baseline]!);
  }
  return Object.fromEntries(Object.entries(per).map(([name, p]) => [name, { iterations: p.iterations, usPerOp: median(p.us), ratio: median(p.ratios) }]));
}

const check = (cond: boolean, what: string): void => {
  if (!cond) throw new Error(`bench precondition failed: ${what}`);
};
check(parseImage(unsigned).ok, 'unsigned image parses');
const parsedSigned = parseImage(signed);
check(parsedSigned.ok && verifySignature(signed, parsedSigned.value.trailer, trusted).status === 'verified', 'signed image verifies');
const trailer = parsedSigned.ok ? parsedSigned.value.trailer : undefined;

const results = measureAll({
  crc32: () => hxeCrc32(unsigned),
  verify_crc_only: () => parseImage(unsigned),
  verify_signed: () => {
    const p = parseImage(signed);
    if (!p.ok || verifySignature(signed, p.value.trailer, trusted).status !== 'verified') throw new Error('verify failed');
  },
  signature_only: () => verifySignature(signed, trailer, trusted),
  sign: () => signImage(unsigned, privateKey, { version: { major: 1, minor: 0, patch: 0, build: 0 }, securityCounter: 1 }),
}, 'verify_crc_only');

for (const [name, m] of Object.entries(results)) {
  const bytes = name === 'crc32' || name === 'verify_crc_only' ? unsigned.length : signed.length;
  process.stdout.write(JSON.stringify({
    bench: 'sign', case: name, bytes, iterations: m.iterations, us_per_op: Number(m.usPerOp.toFixed(2)),
    mb_per_s: Number((bytes / m.usPerOp).toFixed(1)),
    ...(name === 'verify_crc_only' ? { baseline: true } : { ratio_vs_verify_crc_only: Number(m.ratio.toFixed(2)) }),
  }) + '\n');
}
