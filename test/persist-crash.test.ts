import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { openDevice, patternImage } from '../src/persist/index.js';

/**
 * Crash test across processes: a child commits images (and values) in a loop into mapped files;
 * the parent SIGKILLs it at a random moment, reopens the files, recovers and checks the
 * invariants; 100 times over the same files (so the status ring wraps and wear accumulates).
 *
 * The child runs the real src/persist modules, transpiled once to plain JS (node starts in
 * ~0.2 s instead of ~0.5 s under tsx, which keeps 100 kills well inside a minute).
 */
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const GEOMETRY = { flashSize: 256 * 1024, sectorSize: 4096, pageSize: 256, statusSectors: 3, framSize: 16384 };
const KILLS = 100;
/** Image i's length; the child evaluates the same expression. */
const IMAGE_LEN = '1000 + ((i * 997) % 12000)';
const imageLen = new Function('i', `return ${IMAGE_LEN};`) as (i: number) => number;

const CHILD = `
import { openDevice, patternImage, testMeta } from './persist/index.js';
const geometry = JSON.parse(process.argv[3]);
const d = await openDevice(process.argv[2], geometry);
const a = d.imageStore.active();
let i = a ? Number(a.meta.version) : 0;
const schema = { valueType: 'f16' };
process.stdout.write('ready ' + i + '\\n');
for (;;) {
  i++;
  const img = patternImage(i, ${IMAGE_LEN});
  const mode = i % 5 === 0 ? 'test' : 'permanent';
  await d.imageStore.commit(img, testMeta(String(i), i), mode);
  if (mode === 'test') await d.imageStore.confirm();
  process.stdout.write('C ' + i + '\\n');
  d.valueStore.write(0x11, i & 0xffff, schema);
  await d.valueStore.flush();
  process.stdout.write('V ' + i + '\\n');
}
`;

/** The child runs persist (and the image format it reads when recovering slots) as plain JS, without tsx. */
function transpilePersist(out: string): void {
  writeFileSync(join(out, 'package.json'), '{"type":"module"}');
  for (const folder of ['persist', 'hxe', 'hxe/sections']) {
    mkdirSync(join(out, folder), { recursive: true });
    const srcDir = join(ROOT, 'src', folder);
    for (const f of readdirSync(srcDir).filter((n) => n.endsWith('.ts'))) {
      const js = ts.transpileModule(readFileSync(join(srcDir, f), 'utf8'), {
        compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
      }).outputText;
      writeFileSync(join(out, folder, f.replace(/\.ts$/, '.js')), js);
    }
  }
  writeFileSync(join(out, 'child.js'), CHILD);
}

interface Run { lastCommitted: number; lastValue: number; started: number; output: string }

/** Kill `delayMs` after the child prints `after` ('ready': may land in recovery or the first commit; 'C ': after a commit). */
function runChildAndKill(work: string, stateDir: string, delayMs: number, after: 'ready' | 'C '): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(work, 'child.js'), stateDir, JSON.stringify(GEOMETRY)], {
      env: { ...process.env, HSX_MMAP_ADDON: join(ROOT, 'native/build/Release/hsx_mmap.node') },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    let timer: NodeJS.Timeout | null = null;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (timer === null && out.includes(after)) timer = setTimeout(() => child.kill('SIGKILL'), delayMs);
    });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('error', reject);
    // 'close', not 'exit': exit can come before the last lines the child wrote are read from the
    // pipe, and a busy machine then under-reports what the child attempted.
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      if (signal !== 'SIGKILL') {
        reject(new Error(`child exited by itself (code ${code}, signal ${signal}): ${err}`));
        return;
      }
      const last = (tag: string) => Math.max(0, ...[...out.matchAll(new RegExp(`^${tag} (\\d+)$`, 'gm'))].map((m) => Number(m[1])));
      resolve({ lastCommitted: last('C'), lastValue: last('V'), started: last('ready'), output: out });
    });
  });
}

/** Two lanes with their own state directories run side by side (one per core); 100 kills in all. */
const LANES = 2;

test('SIGKILL during commit loops: committed state survives, recovery always finds a whole image', async (t) => {
  t.timeout(240_000);
  const work = mkdtempSync(join(tmpdir(), 'hsx-crash-'));
  transpilePersist(work);
  let kills = 0;
  let committed = 0;
  let midCommitKills = 0;

  async function lane(id: number, rounds: number): Promise<void> {
    const stateDir = join(work, `state${id}`);
    mkdirSync(stateDir);
    let seed = 12345 + id;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    let committedEver = 0;
    let valueEver = 0;
    for (let round = 0; round < rounds; round++) {
      // Half the rounds wait for a first commit, so the loop makes progress however slow the machine is.
      const run = await runChildAndKill(work, stateDir, Math.floor(rnd() * 40), round % 2 ? 'C ' : 'ready');
      kills++;
      committedEver = Math.max(committedEver, run.lastCommitted);
      valueEver = Math.max(valueEver, run.lastValue);
      const d = await openDevice(stateDir);
      try {
        const where = `lane ${id} round ${round} (child started at ${run.started}, reported C ${run.lastCommitted}, V ${run.lastValue})`;
        t.deepEqual(d.imageStore.audit(), [], `${where}: manifest/status inconsistent`);
        const a = d.imageStore.active();
        if (committedEver > 0) t.truthy(a, `${where}: no active image after a reported commit`);
        if (a) {
          const v = Number(a.meta.version);
          if (Buffer.compare(a.image, patternImage(v, imageLen(v))) !== 0) t.fail(`${where}: active image v${v} is not the whole image`);
          if (v < committedEver) t.fail(`${where}: active v${v} is older than the reported commit ${committedEver}`);
          const attempted = Math.max(run.started, run.lastCommitted) + 1;
          if (v > attempted) t.fail(`${where}: active v${v} was never attempted`);
          if (v === attempted) midCommitKills++;
          t.true(d.imageStore.securityCounter() >= v, `${where}: security counter ${d.imageStore.securityCounter()} < active ${v}`);
        }
        const val = d.valueStore.read(0x11, { valueType: 'f16' });
        if (valueEver > 0) {
          t.true(val.ok, `${where}: persisted value lost`);
          if (val.ok && val.raw < valueEver) t.fail(`${where}: value ${val.raw} older than reported ${valueEver}`);
        }
      } finally {
        await d.close();
      }
    }
    committed += committedEver;
  }

  try {
    await Promise.all([...Array(LANES).keys()].map((id) => lane(id, KILLS / LANES)));
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  console.log(`persist-crash: ${kills} SIGKILLs, ${committed} commits reported, ${midCommitKills} kills landed after a switch before its report`);
  t.is(kills, KILLS);
  t.true(committed >= KILLS / 2, `the children made progress (${committed} commits)`);
});
