/**
 * CLI start-up against bare Node (issue 18 item 4): `hsx-gateway --help`, `inspect` of a 104-byte
 * image and `verify` of the same image signed, each against `node -e 0` run alternately in the same
 * loop, so machine noise hits both alike. Goal: each command's median at most 2× node's.
 *
 * Runs the built CLI (`dist/cli/main.js`, what users run); builds it first when it is missing or
 * older than `src/`. One JSON object per line:
 *   {"bench":"cli","measure":"help"|"inspect"|"verify","rounds","node_ms","cli_ms","ratio","ratio_paired","goal":2,"met"}
 *   {"bench":"cli","measure":"summary","ratios":{…},"met"}
 * `ratio` is median(cli) / median(node); `ratio_paired` the median of the per-round ratios.
 * Run: npx tsx bench/cli.ts [--rounds N]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliArgv, ROOT } from '../test/support/cli-argv.js';

const roundsArg = process.argv.indexOf('--rounds');
const ROUNDS = roundsArg >= 0 ? Number(process.argv[roundsArg + 1]) : 21;
const GOAL = 2;
const out = (o: Record<string, unknown>): void => console.log(JSON.stringify(o));

if (cliArgv().length !== 1) {
  // stale or missing build: the sources through tsx would measure tsx, not the CLI
  execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' });
}
const CLI = join(ROOT, 'dist/cli/main.js');

function ms(args: string[]): number {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, args, { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  const t = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${args.join(' ')} exited ${String(r.status)}: ${r.stderr.toString().slice(0, 300)}`);
  return t;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
};

// a signed copy of the 104-byte fixture and the key that verifies it
const dir = mkdtempSync(join(tmpdir(), 'hsx-bench-cli-'));
const image = join(dir, 't01_minimal.hxe');
copyFileSync(join(ROOT, 'test/fixtures/t01_minimal.hxe'), image);
const keys = join(dir, 'keys');
execFileSync(process.execPath, [CLI, 'keygen', '--out', keys, '--name', 'bench'], { cwd: ROOT, stdio: 'ignore' });
const signed = join(dir, 'signed.hxe');
execFileSync(process.execPath, [CLI, 'sign', '--key', join(keys, 'bench.key'), '-o', signed, image], { cwd: ROOT, stdio: 'ignore' });

const cases: Array<{ measure: string; args: string[] }> = [
  { measure: 'help', args: [CLI, '--help'] },
  { measure: 'inspect', args: [CLI, 'inspect', image] },
  { measure: 'verify', args: [CLI, 'verify', '--keys', keys, signed] },
];
const node = ['-e', '0'];
// warm the file cache for every command
for (const c of cases) ms(c.args);
ms(node);

const ratios: Record<string, number> = {};
let met = true;
for (const c of cases) {
  const base: number[] = [];
  const cli: number[] = [];
  const paired: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    // alternate which goes first, so neither always runs on a cooler machine
    const [a, b] = r % 2 ? [ms(c.args), ms(node)] : (() => { const n = ms(node); return [ms(c.args), n] as const; })();
    cli.push(a);
    base.push(b);
    paired.push(a / b);
  }
  const ratio = median(cli) / median(base);
  ratios[c.measure] = Number(ratio.toFixed(2));
  met &&= ratio <= GOAL;
  out({ bench: 'cli', measure: c.measure, rounds: ROUNDS, node_ms: Number(median(base).toFixed(1)), cli_ms: Number(median(cli).toFixed(1)), ratio: Number(ratio.toFixed(2)), ratio_paired: Number(median(paired).toFixed(2)), goal: GOAL, met: ratio <= GOAL });
}
out({ bench: 'cli', measure: 'summary', ratios, goal: GOAL, met });
