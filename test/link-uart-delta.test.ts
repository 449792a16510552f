/**
 * Compressed and delta transfers over the UART link (issue 25), on real pty pairs (socat), with a
 * device on a state directory (mapped flash and FRAM) behind its intake. Images: the Klipper firmware
 * pair of /work/shared/vectors/firmware-pairs wrapped into `.hxe` apps that declare a persisted value.
 *
 * - the UART flasher plans per target: DELTA from the base the device runs (the master's
 *   content-addressed store holds it), CURRENT the second time, COMPRESSED without a base, RAW with
 *   compression and delta turned off, RAW to a device of protocol version 2;
 * - a corrupted patch and a patch for another base leave the old image running, with the typed error;
 * - a cable pulled mid-delta resumes at an offset in the encoded stream;
 * - the real CLI prints the mode and the bytes on the wire (`--json`: mode, bytes_on_wire, ratio).
 *
 * The device runs in this process (the test looks at its engine); masters talk to it through the pty only.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage } from '../src/hxe/index.js';
import { compressImage, makePatch, MemoryContentStore, ContentStore, type ImageSource } from '../src/link/delta/index.js';
import { sendImage } from '../src/link/uart/master.js';
import { UartFlasher, UART_TARGET } from '../src/link/uart/flasher.js';
import { openSimulatedDevice, type SimulatedDevice } from '../src/persist/simulated-device.js';
import { haveSocat, startPtyPair } from './support/pty.js';
import { confirmed, EventLog, listen, masterOn, runningSha, tempOf, type CountingTransport } from './support/uart-device.js';
import { cliArgv } from './support/cli-argv.js';
import { spawn } from 'node:child_process';
import { TEMP, TEMP_OID, f16, sha256Hex as sha } from './update-images.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART link tests need it (apt-get install socat)');
});

const PAIRS = '/work/shared/vectors/firmware-pairs';
const CONFIRM_WINDOW_MS = 150;

/** A firmware binary as a sensor_app build: all of it as code, one persisted value (TEMP). */
function asHxe(file: string): Uint8Array {
  const bin = readFileSync(join(PAIRS, file));
  const code = new Uint8Array(Math.ceil(bin.length / 4) * 4);
  code.set(bin);
  const r = buildImage({ code, appName: 'sensor_app', allowMultipleInstances: false, values: [TEMP] });
  if (!r.ok) throw new Error(`${r.error.field}: ${r.error.message}`);
  return r.value;
}

const V1 = asHxe('klipper-v3-usart2-usb-clock.old.bin');
const V2 = asHxe('klipper-v3-usart2-usb-clock.new.bin');


interface Rig {
  state: string;
  log: EventLog;
  dev: SimulatedDevice;
  lines: Array<Record<string, unknown>>;
  master: CountingTransport;
  pair: Awaited<ReturnType<typeof startPtyPair>>;
  deviceDone: Promise<number>;
  stopDevice(): Promise<number>;
  close(): Promise<void>;
}

async function rig(state: string, log: EventLog, dev: SimulatedDevice, opts: { maxProtocol?: number } = {}): Promise<Rig> {
  const pair = await startPtyPair();
  const device = await listen(dev, pair.b, state, opts.maxProtocol !== undefined ? { maxProtocol: opts.maxProtocol } : {});
  const master = await masterOn(pair.a);
  return {
    state, log, dev, lines: device.lines, master, pair, deviceDone: device.done, stopDevice: device.stop,
    close: async () => {
      await master.close().catch(() => undefined);
      await device.stop();
      await pair.stop();
    },
  };
}

async function flashWith(r: Rig, images: ImageSource, image: Uint8Array, options: { compress?: boolean; delta?: boolean } = {}) {
  const flasher = new UartFlasher({ name: 'test', transport: r.master, images });
  const res = await flasher.flash({ image, appName: 'sensor_app', targets: [UART_TARGET], options: { chunk: 1024, window: 8, ...options } });
  await flasher.close();
  return res;
}

test('UART: v1 → v2 as a DELTA with the value kept, the same again CURRENT (twice on the same state dirs); no base COMPRESSED; both off RAW', async (t) => {
  t.timeout(180_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-delta-'));
  const cache = mkdtempSync(join(tmpdir(), 'uart-delta-cache-'));
  const log = new EventLog();
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: log, confirmWindowMs: CONFIRM_WINDOW_MS });
  const r = await rig(state, log, dev);
  try {
    for (const round of [0, 1]) {
      const store = new ContentStore(cache);
      // v1: round 0 installs it compressed (fresh device, nothing to patch from); round 1 goes back to it
      let mark = log.mark();
      const first = await flashWith(r, store, V1);
      t.true(first.verdicts[0]!.ok, JSON.stringify(first.error));
      t.is(first.transfer?.mode, round === 0 ? 'compressed' : 'delta', `round ${round}: v1`);
      if (round > 0) await log.waitFor(confirmed, mark, 'confirm of v1');
      const raw = f16(21.5 + round);
      t.true(dev.intake.setValue(TEMP_OID, raw).ok);

      mark = log.mark();
      const upd = await flashWith(r, store, V2);
      t.true(upd.verdicts[0]!.ok, JSON.stringify(upd.error));
      const tr = upd.transfer!;
      t.is(tr.mode, 'delta');
      t.is(tr.base, sha(V1));
      t.is(upd.outcome?.outcome, 'updated');
      t.is(upd.outcome?.encoding, 'patch');
      t.true(tr.stream_bytes < compressImage(V2).bytes.length, 'the patch is smaller than the compressed image');
      t.true(tr.bytes_on_wire >= tr.stream_bytes && tr.stream_bytes < tr.image_bytes, `ratio ${tr.ratio}`);
      t.deepEqual(runningSha(dev), [sha(V2)]);
      t.is(tempOf(dev), raw, 'the value was carried');
      await log.waitFor(confirmed, mark, 'confirm of v2');
      t.log(`round ${round}: delta ${tr.bytes_on_wire} of ${tr.image_bytes} bytes (ratio ${tr.ratio}); compressed ${first.transfer?.stream_bytes}`);
      console.log(`link-uart-delta: klipper pair as .hxe: DELTA ${tr.bytes_on_wire} / ${tr.image_bytes} bytes = ${tr.ratio}; v1 went ${first.transfer?.mode?.toUpperCase()} ${first.transfer?.bytes_on_wire} / ${V1.length} = ${first.transfer?.ratio}`);

      const again = await flashWith(r, store, V2);
      t.is(again.transfer?.mode, 'current');
      t.is(again.transfer?.bytes_on_wire, 0);
      t.is(again.outcome?.dataBytesSent, 0);
      // every image flashed is in the store, by SHA-256
      t.true(existsSync(join(cache, `${sha(V1)}.hxe`)) && existsSync(join(cache, `${sha(V2)}.hxe`)));
    }
    // a store without v2: COMPRESSED; compression and delta off: RAW
    const empty = new MemoryContentStore();
    let mark = log.mark();
    const c = await flashWith(r, empty, V1);
    t.is(c.transfer?.mode, 'compressed');
    t.is(c.outcome?.encoding, 'deflate');
    t.true(c.transfer!.stream_bytes < V1.length);
    await log.waitFor(confirmed, mark, 'confirm of compressed v1');
    mark = log.mark();
    const raw = await flashWith(r, empty, V2, { compress: false, delta: false });
    t.is(raw.transfer?.mode, 'raw');
    t.is(raw.outcome?.encoding, 'raw');
    t.is(raw.transfer?.stream_bytes, V2.length);
    t.true(raw.transfer!.bytes_on_wire >= V2.length && raw.transfer!.ratio >= 1);
    t.deepEqual(runningSha(dev), [sha(V2)]);
    await log.waitFor(confirmed, mark, 'confirm of raw v2');
  } finally {
    await r.close();
    await dev.close();
    rmSync(state, { recursive: true, force: true });
    rmSync(cache, { recursive: true, force: true });
  }
});

test('UART: a corrupted patch and a patch for another base leave the old image running; the error names the SHA-256 mismatch', async (t) => {
  t.timeout(120_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-delta-bad-'));
  const log = new EventLog();
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: log, confirmWindowMs: CONFIRM_WINDOW_MS });
  const r = await rig(state, log, dev);
  try {
    const mark = log.mark();
    t.true((await flashWith(r, new MemoryContentStore(), V1)).verdicts[0]!.ok);
    t.true(dev.intake.setValue(TEMP_OID, f16(12)).ok);
    await log.waitFor((e) => e.type === 'provisioning.persisted', mark, 'v1 persisted');
    const patch = makePatch(V1, V2, { windowBits: 11 }).bytes;

    // a patch for another base: refused at OPEN, before any data
    const other = Buffer.from(sha(V2), 'hex');
    const wrong = await sendImage(r.master, V2, { appName: 'sensor_app', encoded: { kind: 'patch', windowBits: 11, bytes: patch, baseSha256: other } });
    t.false(wrong.ok);
    if (!wrong.ok) t.like(wrong.error, { code: 'EBADMSG', reason: 'base_mismatch', remote: true });
    const ev = r.lines.find((l) => l['event'] === 'error' && JSON.stringify(l).includes('base_mismatch'));
    t.regex(JSON.stringify(ev), new RegExp(`${sha(V2)}.*${sha(V1)}`), 'the device names both SHA-256');
    t.deepEqual(runningSha(dev), [sha(V1)]);

    // a corrupted patch (a byte flipped in the body): refused by the decoder or by the SHA-256 check
    const bad = patch.slice();
    bad[Math.floor(bad.length / 2)] = bad[Math.floor(bad.length / 2)]! ^ 0xa5;
    const corrupt = await sendImage(r.master, V2, { appName: 'sensor_app', encoded: { kind: 'patch', windowBits: 11, bytes: bad, baseSha256: Buffer.from(sha(V1), 'hex') } });
    t.false(corrupt.ok);
    if (!corrupt.ok) t.is(corrupt.error.code, 'EBADMSG', JSON.stringify(corrupt.error));
    t.deepEqual(runningSha(dev), [sha(V1)], 'v1 still runs');
    t.is(dev.engine.storedSha256(), sha(V1), 'the active slot still holds v1');
    t.is(tempOf(dev), f16(12), 'its value too');
    // a corrupted compressed image whose decoded bytes do not hash to the announced SHA-256
    const cz = compressImage(V2);
    const flipped = cz.bytes.slice();
    flipped[flipped.length - 3] = flipped[flipped.length - 3]! ^ 0x01;
    const badZ = await sendImage(r.master, V2, { appName: 'sensor_app', encoded: { kind: 'deflate', windowBits: cz.windowBits, bytes: flipped } });
    t.false(badZ.ok);
    t.deepEqual(runningSha(dev), [sha(V1)]);
    // the flasher with a store that hands out the wrong bytes for the base the device reports: the
    // device refuses the patch (its header names another base), the master sends the full image instead
    const lying = { put: async (b: Uint8Array) => sha(b), get: async () => V2.map((x, i) => (i % 97 === 0 ? x ^ 1 : x)) };
    const fell = await flashWith(r, lying, V2);
    t.true(fell.verdicts[0]!.ok, JSON.stringify(fell.error));
    t.like(fell.transfer, { mode: 'compressed', fallback: 'base_mismatch' });
    t.true(r.lines.some((l) => l['event'] === 'error' && /base_(size_)?mismatch/.test(JSON.stringify(l))), JSON.stringify(r.lines.filter((l) => l['event'] === 'error')));
    t.deepEqual(runningSha(dev), [sha(V2)]);
    t.is(tempOf(dev), f16(12));
  } finally {
    await r.close();
    await dev.close();
    rmSync(state, { recursive: true, force: true });
  }
});

test('UART: cable pulled mid-delta; the next flash resumes at an offset in the patch stream and ends UPDATED', async (t) => {
  t.timeout(120_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-delta-pull-'));
  const log = new EventLog();
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: log, confirmWindowMs: CONFIRM_WINDOW_MS });
  const A = V1;
  const r1 = await rig(state, log, dev);
  const store = new MemoryContentStore();
  const chunk = 256;
  const cut = 10;
  try {
    const mark = log.mark();
    t.true((await flashWith(r1, store, A)).verdicts[0]!.ok);
    await log.waitFor(confirmed, mark, 'v1 confirmed').catch(() => undefined);
    const patch = makePatch(A, V2, { windowBits: 11 }).bytes;
    t.true(patch.length > (cut + 4) * chunk, `patch of ${patch.length} bytes`);
    const enc = { kind: 'patch' as const, windowBits: 11, bytes: patch, baseSha256: Buffer.from(sha(A), 'hex') };
    r1.master.cutAt = cut;
    let pulled = false;
    const res = await sendImage(r1.master, V2, {
      appName: 'sensor_app', chunkSize: chunk, window: 4, encoded: enc,
      onProgress: (p) => {
        if (p.ackedBytes >= cut * chunk && !pulled) {
          pulled = true;
          void r1.pair.stop();
        }
      },
    });
    t.false(res.ok);
    t.is(await r1.deviceDone, 1, 'the device lost its port');
    await r1.master.close().catch(() => undefined);
    t.deepEqual(runningSha(dev), [sha(A)], 'v1 still runs after the pull');

    const r2 = await rig(state, log, dev);
    try {
      const resumed = await sendImage(r2.master, V2, { appName: 'sensor_app', chunkSize: chunk, encoded: enc });
      t.true(resumed.ok, JSON.stringify(!resumed.ok && resumed.error));
      if (resumed.ok) {
        t.is(resumed.value.outcome, 'updated');
        t.is(resumed.value.encoding, 'patch');
        t.true(resumed.value.resumeOffset >= cut * chunk, `resumed at ${resumed.value.resumeOffset}`);
        t.true(resumed.value.dataBytesSent >= patch.length - resumed.value.resumeOffset, 'the rest of the patch was sent');
        t.true(resumed.value.dataBytesSent < patch.length - cut * chunk + 4 * chunk, `only the rest (and any frame resent): ${resumed.value.dataBytesSent} of ${patch.length}`);
      }
      t.deepEqual(runningSha(dev), [sha(V2)]);
    } finally {
      await r2.close();
    }
  } finally {
    await dev.close();
    rmSync(state, { recursive: true, force: true });
  }
});

test('UART: a device of protocol version 2 gets the RAW image (INFO version 3 refused), and still answers CURRENT', async (t) => {
  t.timeout(120_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-delta-old-'));
  const log = new EventLog();
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: log, confirmWindowMs: CONFIRM_WINDOW_MS });
  const r = await rig(state, log, dev, { maxProtocol: 2 });
  const store = new MemoryContentStore();
  try {
    const first = await flashWith(r, store, V1);
    t.true(first.verdicts[0]!.ok, JSON.stringify(first.error));
    t.is(first.transfer?.mode, 'raw');
    t.is(first.outcome?.protocolVersion, 2);
    t.is(first.transfer?.stream_bytes, V1.length);
    t.true(first.transfer!.bytes_on_wire >= V1.length, 'bytes on the wire: the stream, plus any frame resent');
    const mark = log.mark();
    const upd = await flashWith(r, store, V2);
    t.is(upd.transfer?.mode, 'raw', 'the store holds the base, but the device cannot apply a patch');
    t.is(upd.outcome?.outcome, 'updated');
    await log.waitFor(confirmed, mark, 'confirm of v2');
    const again = await flashWith(r, store, V2);
    t.is(again.transfer?.mode, 'current');
  } finally {
    await r.close();
    await dev.close();
    rmSync(state, { recursive: true, force: true });
  }
});

interface Proc { lines: Array<Record<string, unknown>>; exited: Promise<number>; stderr: () => string }
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn(process.execPath, [...cliArgv(), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: Array<Record<string, unknown>> = [];
  let buf = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ event: 'text', text: line });
      }
    }
  });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? -1)));
  return { lines, exited, stderr: () => err };
}

test('CLI: flash --uart prints COMPRESSED, then DELTA (from base short-SHA) with bytes on the wire, then CURRENT; --json gives mode, bytes_on_wire, ratio; --base, --no-compress --no-delta', async (t) => {
  t.timeout(180_000);
  const state = mkdtempSync(join(tmpdir(), 'uart-delta-cli-'));
  const cache = mkdtempSync(join(tmpdir(), 'uart-delta-cli-cache-'));
  const xdg = mkdtempSync(join(tmpdir(), 'uart-delta-xdg-'));
  const log = new EventLog();
  const dev = await openSimulatedDevice({ name: 'uart', stateDir: state, events: log, confirmWindowMs: CONFIRM_WINDOW_MS });
  const r = await rig(state, log, dev);
  await r.master.close(); // the CLI opens the master side itself
  const v1 = join(state, 'v1.hxe');
  const v2 = join(state, 'v2.hxe');
  writeFileSync(v1, V1);
  writeFileSync(v2, V2);
  try {
    // no store given: the default is $XDG_CACHE_HOME/hsx-gateway/images
    let mark = log.mark();
    const a = cli(['flash', '--uart', r.pair.a, '--json', v1], { XDG_CACHE_HOME: xdg });
    t.is(await a.exited, 0, a.stderr());
    t.like(a.lines.at(-1), { verdict: 'READY', mode: 'COMPRESSED' });
    t.true(existsSync(join(xdg, 'hsx-gateway', 'images', `${sha(V1)}.hxe`)), 'the flashed image is in the default cache');
    await log.waitFor((e) => e.type === 'provisioning.persisted', mark, 'v1 persisted');

    // a fresh --cache without v1: --base adds it by hand, so v2 goes as a delta (text output)
    mark = log.mark();
    const b = cli(['flash', '--uart', r.pair.a, '--cache', cache, '--base', v1, v2]);
    t.is(await b.exited, 0, b.stderr());
    const modeLine = String(b.lines.find((l) => /^flash: DELTA/.test(String(l['text'])))?.['text'] ?? '');
    t.regex(modeLine, new RegExp(`^flash: DELTA from ${sha(V1).slice(0, 12)}: \\d+ bytes on the wire for a ${V2.length}-byte image \\(ratio 0\\.\\d{3}\\)`));
    t.true(b.lines.some((l) => /^flash: UPDATED/.test(String(l['text']))));
    await log.waitFor(confirmed, mark, 'confirm of v2');
    t.deepEqual(readdirSync(cache).sort(), [`${sha(V1)}.hxe`, `${sha(V2)}.hxe`].sort());

    const c = cli(['flash', '--uart', r.pair.a, '--cache', cache, '--json', v2]);
    t.is(await c.exited, 0, c.stderr());
    t.like(c.lines.at(-1), { verdict: 'CURRENT', mode: 'CURRENT', bytes_on_wire: 0 });

    // back to v1 with --json: a delta again (v2 → v1), then raw with both off
    mark = log.mark();
    const d = cli(['flash', '--uart', r.pair.a, '--cache', cache, '--json', v1]);
    t.is(await d.exited, 0, d.stderr());
    const dj = d.lines.at(-1)!;
    t.like(dj, { verdict: 'UPDATED', mode: 'DELTA', base: sha(V2) });
    t.is(typeof dj['bytes_on_wire'], 'number');
    t.true((dj['ratio'] as number) > 0 && (dj['ratio'] as number) < 1);
    await log.waitFor(confirmed, mark, 'confirm of v1');
    mark = log.mark();
    const e = cli(['flash', '--uart', r.pair.a, '--cache', cache, '--json', '--no-compress', '--no-delta', v2]);
    t.is(await e.exited, 0, e.stderr());
    t.like(e.lines.at(-1), { verdict: 'UPDATED', mode: 'RAW', stream_bytes: V2.length });
    t.true((e.lines.at(-1)!['bytes_on_wire'] as number) >= V2.length && (e.lines.at(-1)!['ratio'] as number) >= 1);
    await log.waitFor(confirmed, mark, 'confirm of raw v2');
  } finally {
    await r.stopDevice();
    await r.pair.stop();
    await dev.close();
    for (const d of [state, cache, xdg]) rmSync(d, { recursive: true, force: true });
  }
});
