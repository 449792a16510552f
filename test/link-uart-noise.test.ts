/**
 * 100 transfers at each of two error rates through a relay that damages the line (bit flips, dropped, duplicated and
 * inserted bytes) between two pty pairs. Every transfer must end with the device holding a
 * byte-identical READY image, or with a clean typed error at the master — never with a damaged
 * image accepted. Outcomes and injected faults are counted and printed.
 */
import test from 'ava';
import { sendImage, type SessionRestart } from '../src/link/uart/master.js';
import { DEFAULT_CHUNK } from '../src/link/uart/settings.js';
import { haveSocat, startPtyPair } from './support/pty.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NoiseRelay, fixture, fixtureNames, makeImage, prng, rig, roomFor, runScript, sha256, stopChild, type Rig } from './link-uart-harness.js';

test.before(() => {
  if (!haveSocat()) throw new Error('socat is not installed: the UART link tests need it (apt-get install socat)');
});

const seed = Number(process.env['UART_NOISE_SEED'] ?? 0x5eed) >>> 0;
/** Short timeouts: a lost frame is repaired in tens of ms, not the default quarter second. */
const noisyTiming = { rtoMs: 60, maxRtoMs: 480, maxRetries: 8, maxFrameRetransmits: 40, endTimeoutMs: 3000 };

/**
 * An in-process device and a master port joined by a noise relay (masterSide.b <-> deviceSide.a).
 * The device opens its port first, then the relay, then the master: opening a port flushes it.
 */
async function noisyRig(seedOffset: number): Promise<{ r: Rig; relay: NoiseRelay; close(): Promise<void> }> {
  const masterSide = await startPtyPair();
  const deviceSide = await startPtyPair();
  const r = await rig({ pair: deviceSide, masterPath: masterSide.a, config: roomFor(1 << 20), listener: { timing: { idleTimeoutMs: 3000 } } });
  const relay = new NoiseRelay(prng(seed + seedOffset));
  await relay.start(masterSide.b, deviceSide.a);
  return {
    r, relay,
    async close() {
      await relay.stop();
      await r.close();
      await masterSide.stop();
    },
  };
}

test('100 transfers at 1e-4 and 100 at 1e-3 errors per byte: byte-identical READY or a clean error, never a corrupted image', async (t) => {
  t.timeout(240_000);
  const { r, relay, close } = await noisyRig(0);
  const outcomes: Record<string, number> = {};
  const count = (k: string): void => { outcomes[k] = (outcomes[k] ?? 0) + 1; };
  const knownCodes = new Set(['ETIMEDOUT', 'EIO', 'EPROTO', 'EBADMSG', 'ECANCELED', 'ESRCH', 'EBUSY']);
  try {
    const big1e4 = makeImage(16 << 10, 'noise16k', 21);
    const big1e3 = makeImage(6 << 10, 'noise6k', 22);
    let n = 0;
    for (const rate of [1e-4, 1e-3]) {
      relay.rate = rate;
      for (let i = 0; i < 100; i++, n++) {
        const useBig = i % 5 === 4;
        const image = useBig ? (rate === 1e-4 ? big1e4 : big1e3) : fixture(fixtureNames[n % fixtureNames.length]!);
        // On the noisier line, small frames: a 4 KiB frame would almost never get through.
        const chunkSize = rate === 1e-3 ? 256 : undefined;
        const res = await sendImage(r.master, image, {
          ...(chunkSize ? { chunkSize } : {}),
          timing: noisyTiming,
        });
        // Whatever the master heard, every task the device holds must be exactly this image.
        for (const task of r.engine.ps()) {
          const held = r.engine.taskImage(task.pid);
          t.true(held !== undefined && Buffer.from(held).equals(Buffer.from(image)), `transfer ${n} (rate ${rate}): the device holds a READY image that differs from the one sent`);
          r.engine.unload(task.pid);
        }
        if (res.ok) {
          count(`${rate}:ready`);
        } else {
          t.true(knownCodes.has(res.error.code), `transfer ${n}: unexpected error ${JSON.stringify(res.error)}`);
          t.is(typeof res.error.reason, 'string');
          count(`${rate}:error:${res.error.code}:${res.error.reason}`);
        }
      }
    }
    // The listener only ever announced READY for the image's own SHA-256 (checked at END).
    const ready = r.events.filter((e) => e.type === 'ready');
    t.true(ready.every((e) => e.type === 'ready' && e.sha256.length === 64));
    const total = Object.values(outcomes).reduce((a, b) => a + b, 0);
    t.is(total, 200);
    t.true((outcomes['0.0001:ready'] ?? 0) > 0 && (outcomes['0.001:ready'] ?? 0) > 0, 'transfers do get through the noise');
    t.true(relay.faults.flip > 0 && relay.faults.drop > 0 && relay.faults.duplicate > 0 && relay.faults.garbage > 0, 'every kind of fault was injected');
    t.log(`seed 0x${seed.toString(16)}; outcomes ${JSON.stringify(outcomes)}`);
    t.log(`faults injected over ${relay.bytes} relayed bytes: ${JSON.stringify(relay.faults)}`);
    const drops = (c: Record<string, number> | undefined): Record<string, number> =>
      Object.fromEntries(Object.entries(c ?? {}).filter(([k, v]) => k.startsWith('dropped_') && v > 0));
    t.log(`frames dropped at the device: ${JSON.stringify(drops(r.device.status().counters))}; at the master: ${JSON.stringify(drops(r.master.status().counters))}`);
    t.log(`listener: ${JSON.stringify(r.listener.counters)}; ready events ${ready.length}; sha256 of big images ${sha256(big1e4).slice(0, 8)}/${sha256(big1e3).slice(0, 8)}`);
  } finally {
    await close();
  }
});

test('a line that loses most default-size frames: the master goes on with smaller frames, resuming, and the device gets the exact image', async (t) => {
  t.timeout(240_000);
  const { r, relay, close } = await noisyRig(1);
  let resumedAfterChange = 0;
  try {
    // 1e-3 errors per byte: an 8 KiB frame survives almost never, 2 KiB ~13%, 512 bytes ~60%.
    // 3e-4: 8 KiB ~8%, 2 KiB ~54%, so some frames get through before the master gives up on a size.
    for (const [rate, n] of [[1e-3, 1], [3e-4, 4]] as const) {
      relay.rate = rate;
      for (let i = 0; i < n; i++) {
        const image = makeImage(48 << 10, `lossy_${i}`, 23 + i);
        const restarts: SessionRestart[] = [];
        const opensBefore = r.events.filter((e) => e.type === 'open').length;
        const res = await sendImage(r.master, image, {
          onRestart: (c) => restarts.push(c),
          timing: noisyTiming,
        });
        t.true(res.ok, JSON.stringify(res));
        if (!res.ok) return;
        t.log(`rate ${rate}: ${restarts.map((c) => `${c.reason} ${c.from}→${c.to} at byte ${c.ackedBytes} (${c.retransmits} resent / ${c.delivered} delivered)`).join(', ') || 'one session'}; ${res.value.retransmits} retransmissions, ${res.value.dataBytesSent} data bytes sent for ${image.length}`);
        t.deepEqual(r.engine.taskImage(res.value.pid), image, 'the device holds exactly the image');
        r.engine.unload(res.value.pid);
        t.deepEqual(res.value.restarts, restarts);
        const changes = restarts.filter((c) => c.reason === 'line_too_lossy');
        // Evidence first (8 NAKed frames, or 3 timeouts in a row, each with a retransmission), then a quarter the size.
        t.true(changes.every((c) => c.retransmits >= 3 && c.to === Math.max(256, c.from / 4)), JSON.stringify(changes));
        if (rate === 1e-3) {
          t.true(changes.length > 0 && changes[0]!.from === DEFAULT_CHUNK, 'the default frames were given up');
          t.is(res.value.chunkSize, changes[changes.length - 1]!.to);
        }
        // Each later session resumed from what the device had acknowledged: nothing was sent twice.
        const opens = r.events.filter((e) => e.type === 'open').slice(opensBefore);
        restarts.forEach((c, k) => {
          const next = opens[k + 1];
          t.truthy(next, 'a new session was opened after each restart');
          if (next?.type === 'open') {
            t.true(next.resumeOffset >= c.ackedBytes, `resumed at ${next.resumeOffset}, ${c.ackedBytes} were acknowledged`);
            if (c.ackedBytes > 0) resumedAfterChange++;
          }
        });
      }
    }
    t.log(`sessions that resumed after a frame-size change: ${resumedAfterChange}`);
  } finally {
    await close();
  }
});

test('a burst of noise: frames shrink, then grow back to the default once the line is clean, resuming exactly where they stopped', async (t) => {
  t.timeout(120_000);
  const { r, relay, close } = await noisyRig(3);
  try {
    for (let i = 0; i < 3; i++) {
      relay.rate = 1e-3;
      const image = makeImage(384 << 10, `burst_${i}`, 41 + i);
      const restarts: SessionRestart[] = [];
      const opensBefore = r.events.filter((e) => e.type === 'open').length;
      const res = await sendImage(r.master, image, {
        timing: noisyTiming,
        onRestart: (c) => {
          restarts.push(c);
          // The burst ends once the frames are small: the line is clean from here on.
          if (c.reason === 'line_too_lossy' && c.to <= 512) relay.rate = 0;
        },
      });
      t.true(res.ok, JSON.stringify(res));
      if (!res.ok) return;
      t.log(`burst ${i}: ${restarts.map((c) => `${c.reason} ${c.from}→${c.to} at byte ${c.ackedBytes}`).join(', ')}; ${res.value.dataBytesSent} data bytes sent for ${image.length}`);
      t.deepEqual(r.engine.taskImage(res.value.pid), image, 'the device holds exactly the image');
      r.engine.unload(res.value.pid);
      const grown = restarts.filter((c) => c.reason === 'line_recovered');
      t.true(grown.length > 0, 'the frames grew again');
      t.true(grown.every((c) => c.to === Math.min(DEFAULT_CHUNK, c.from * 4) && c.ackedBytes % c.to === 0), JSON.stringify(grown));
      // Frames grow after a run of frames without a retransmission. On a clean line every frame gets
      // through, so they grow back to the default; on a loaded machine an ACK later than the
      // retransmission timeout resends a frame the device already has, which (rightly) restarts the
      // run, so there the claim is only that they grew. Sessions up to the one that ended the burst
      // are the burst's; what the later ones resent was resent on a clean line.
      const burstEnd = restarts.findIndex((c) => c.reason === 'line_too_lossy' && c.to <= 512);
      const resentInBurst = restarts.slice(0, burstEnd + 1).reduce((n, c) => n + c.retransmits, 0);
      const resentWhenClean = res.value.retransmits - resentInBurst;
      if (resentWhenClean === 0) t.is(res.value.chunkSize, DEFAULT_CHUNK, 'the transfer ended with the default frames');
      else t.log(`burst ${i}: ${resentWhenClean} frames resent after the line went clean (late ACKs on a busy machine); the frames grew to ${res.value.chunkSize}`);
      // A session ended to grow resumes exactly at what was acknowledged: nothing is sent twice.
      const opens = r.events.filter((e) => e.type === 'open').slice(opensBefore);
      restarts.forEach((c, k) => {
        const next = opens[k + 1];
        t.true(next?.type === 'open' && (c.reason === 'line_recovered' ? next.resumeOffset === c.ackedBytes : next.resumeOffset >= c.ackedBytes),
          `${c.reason} at ${c.ackedBytes}: next session resumed at ${next?.type === 'open' ? next.resumeOffset : 'none'}`);
      });
    }
  } finally {
    await close();
  }
});

/**
 * A `device` process (with a state directory, so what it received survives each session) and a
 * master port joined by a noise relay at 1e-3, with `image` written to a file for `flash`. The
 * device opens its port first, then the relay, then the master: opening a port flushes it.
 */
async function cliNoisyRig(seedOffset: number, image: Uint8Array): Promise<{ masterPort: string; imagePath: string; device: ReturnType<typeof runScript>; relay: NoiseRelay; close(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'uart-cli-noise-'));
  const masterSide = await startPtyPair();
  const deviceSide = await startPtyPair();
  const device = runScript('../src/cli/main.ts', ['device', '--uart', deviceSide.b, '--state', join(dir, 'state'), '--json']);
  const relay = new NoiseRelay(prng(seed + seedOffset));
  const close = async (): Promise<void> => {
    await relay.stop();
    await stopChild(device);
    await masterSide.stop();
    await deviceSide.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await device.waitFor((l) => l['event'] === 'listening');
    await relay.start(masterSide.b, deviceSide.a);
    relay.rate = 1e-3;
    const imagePath = join(dir, 'image.hxe');
    writeFileSync(imagePath, image);
    return { masterPort: masterSide.a, imagePath, device, relay, close };
  } catch (e) {
    await close();
    throw e;
  }
}

test('CLI: flash --json over a lossy line reports each frame-size change and ends READY', async (t) => {
  t.timeout(180_000);
  const { masterPort, imagePath, device, close } = await cliNoisyRig(2, makeImage(24 << 10, 'lossy_cli', 31));
  try {
    // --baud sizes the retransmission timeout (a pty ignores the rate itself).
    const flash = runScript('../src/cli/main.ts', ['flash', '--uart', masterPort, '--baud', '4000000', '--json', imagePath]);
    t.is(await flash.exited, 0, `${flash.stderr()}\n${JSON.stringify(flash.lines.filter((l) => l['event'] !== 'progress'))}`);
    const restarts = flash.lines.filter((l) => l['event'] === 'restart');
    t.log(restarts.map((c) => `${String(c['reason'])} ${String(c['from'])}→${String(c['to'])} at byte ${String(c['ackedBytes'])}`).join(', '));
    const lossy = restarts.filter((c) => c['reason'] === 'line_too_lossy');
    t.true(lossy.length > 0, JSON.stringify(flash.lines.filter((l) => l['event'] !== 'progress')));
    t.is(lossy[0]!['from'], DEFAULT_CHUNK);
    const ready = flash.lines.find((l) => l['event'] === 'ready');
    t.truthy(ready);
    t.is((ready!['restarts'] as unknown[]).length, restarts.length);
    await device.waitFor((l) => l['event'] === 'ready');
  } finally {
    await close();
  }
});

test('CLI: flash (text) over a burst of noise says when it shrinks the frames and when it grows them back, and ends READY', async (t) => {
  t.timeout(180_000);
  // The largest image the CLI device's default budgets take (64 KiB each of code and rodata).
  const image = makeImage(128 << 10, 'burst_cli', 51);
  const { masterPort, imagePath, device, relay, close } = await cliNoisyRig(4, image);
  try {
    const flash = runScript('../src/cli/main.ts', ['flash', '--uart', masterPort, '--baud', '4000000', imagePath]);
    const text = (): string[] => flash.lines.filter((l) => l['event'] === 'text').map((l) => String(l['text']));
    // The burst ends once the frames are small: the line is clean from then on.
    await flash.waitFor((l) => /the line is losing frames .* going on with (256|512)-byte frames/.test(String(l['text'] ?? '')), 60_000);
    relay.rate = 0;
    t.is(await flash.exited, 0, `${flash.stderr()}\n${text().join('\n')}`);
    t.log(text().join('\n'));
    const grown = text().filter((l) => /^flash: the line is clean again \(\d+ frames delivered\): going on with \d+-byte frames from byte \d+$/.test(l));
    t.true(grown.length > 0, 'the frames grew back, and flash said so');
    t.true(text().some((l) => l.startsWith(`flash: READY on ${masterPort}: burst_cli`)));
    const ready = await device.waitFor((l) => l['event'] === 'ready');
    t.is(ready['sha256'], sha256(image), 'the device holds exactly the image');
  } finally {
    await close();
  }
});
