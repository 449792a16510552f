/**
 * UART link benchmark over real pty pairs (socat): a 1 MiB image flashed with the default
 * settings, master in this process and the device (real engine + listener) in a child process,
 * against the raw pty throughput measured in the same run: this process writes 1 MiB, a child
 * reads it.
 *
 * Four raw baselines, interleaved with the link runs so all see the same machine load:
 *   raw_pty          through the link's own byte path (port-io.ts: serialport's binding opens and
 *                    configures the port, non-blocking reads/writes on the event loop). This is the
 *                    baseline the goal is measured against: same I/O, no protocol.
 *   raw_pty_stream   through serialport's SerialPort stream API (every read and write via libuv's
 *                    thread pool), for comparison with what a plain serialport program gets.
 *   raw_pty_verified the same as raw_pty, but the reader also computes SHA-256 and CRC-32 over every
 *                    byte: the checks any device must make of an image the protocol announces by
 *                    its SHA-256 and CRC-32, and nothing else (no framing, no ACKs, no engine). No
 *                    implementation of the link can beat it on the same machine, so
 *                    `verifiedRawRatio` in the summary is a ceiling for `throughputRatio`.
 *   raw_pty_minimum  the least any implementation of this protocol must do, with nothing else: the
 *                    writer computes the image's SHA-256 and CRC-32 before its first byte (the
 *                    OPEN frame announces both, so a master cannot start without them), then
 *                    writes raw; the reader checks both and keeps every byte in one image buffer
 *                    (the engine must hold the image). It leaves out even the framing (COBS,
 *                    frame CRCs, ACKs) the link must also do, so `throughputRatio` cannot exceed
 *                    `minimumRawRatio` (or its paired form) on the same machine: the tightest ceiling.
 *
 * Prints one JSON object per line:
 *   {"bench":"uart","measure":"raw_pty"|"raw_pty_stream"|"raw_pty_verified"|"raw_pty_minimum",...}  each baseline run
 *   {"bench":"uart","measure":"flash_1mib",...}                each link run (wire efficiency, throughput)
 *   {"bench":"uart","measure":"summary",...}                   medians, efficiency and throughput ratios
 *                                                              (of the medians, and run by run: `…Paired`)
 *
 * Updates (after the above; `--part update` runs only these):
 *   {"measure":"flash_64k_full"}     a 64 KiB single-instance image sent whole over the pty link (`force`: the
 *                                    device already runs it, so it is an update of itself) — the baseline for:
 *   {"measure":"reflash_64k_current"} the same image flashed again without force: the device answers CURRENT
 *                                    and no DATA moves. Time and bytes on the wire (both directions) of each.
 *   {"measure":"update_64k_intake"}  an on-device update of 64 KiB through the intake on a device with mapped
 *                                    flash and FRAM files (openSimulatedDevice in a temp dir): open, write,
 *                                    finish = SHA-256 check, verify and admit, commit to the inactive slot
 *                                    (test mode), switch. The confirm is outside the timing. Against:
 *   {"measure":"raw_write_fsync_64k"} the same 64 KiB written to a file in the same directory and fsync'd.
 *   {"measure":"raw_commit_minimum_64k"} the least durable I/O a power-fail-safe A/B commit with a values
 *                                    snapshot needs, done raw: image and snapshot written and fsync'd, then a
 *                                    64-byte status record written and fsync'd (`minimumRatio` = this / raw).
 *   {"measure":"summary_update"}     medians and ratios (`updateRatio`, goal <= 3; `updateRatioVsMinimum`; `reflashTimeRatio`,
 *                                    `reflashByteRatio`). Each pair is measured alternately in the same run.
 *
 * Wire efficiency = image bytes / (bytes the master wrote + bytes the listener wrote), counted by
 * the two transports (COBS, delimiters, OPEN/END/RESULT and every ACK included).
 *
 * Per run it also reports each stage's CPU time (process.cpuUsage for the Node processes, /proc for
 * socat), the reads the receiving side needed, and `windowStallMs`: how long the master had a full
 * window, i.e. waited for the device. On a 2-core machine every stage (writer, socat, reader)
 * competes for CPU, so the time per MiB follows the CPU the stages spend per MiB. BENCH_PROF=DIR
 * writes a CPU profile of the device process into DIR.
 *
 * Then the same raw and link transfers over a cable with a real line rate (test/support/paced-cable.ts,
 * `--line-baud`, default 12 Mbaud like a fast USB-serial bridge; 0 skips it): raw_line, flash_line,
 * and lineThroughputRatio in the summary. There the line, not the CPU, is the limit, as on a bench rig.
 * (In flash_line, masterCpuMs includes the cable's relaying, which runs in this process.)
 *
 * The summary also gives `stealPercent`: the share of the machine's CPU time the hypervisor gave to
 * other guests during the run. These machines are shared; a run with more than a few percent of
 * steal measures the neighbours as much as the link.
 *
 *   npx tsx bench/uart.ts [--runs N] [--chunk BYTES] [--window FRAMES] [--line-baud BAUD] [--line-runs N]
 *                         [--update-runs N] [--part all|update]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { SerialPort } from 'serialport';
import { buildImage } from '../src/hxe/index.js';
import { DeviceIntake, ProvisioningEngine, nullEventSink, systemClock } from '../src/engine/index.js';
import { openSimulatedDevice } from '../src/persist/simulated-device.js';
import { sensorOfSize } from '../test/update-images.js';
import { UartPortTransport } from '../src/link/uart/port-transport.js';
import { SerialPortIo } from '../src/link/uart/port-io.js';
import { UartListener } from '../src/link/uart/listener.js';
import { MemoryPartialStore } from '../src/link/uart/partial-store.js';
import { sendImage, type FlashOutcome } from '../src/link/uart/master.js';
import { DEFAULT_CHUNK, DEFAULT_WINDOW } from '../src/link/uart/settings.js';
import { startPtyPair, type PtyPair } from '../src/link/uart/pty-pair.js';
import { startPacedCable } from '../test/support/paced-cable.js';
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { crc32 } from 'node:zlib';

/** CPU time (user+system, ms) a process has used so far, from /proc (socat's share of each run). */
function procCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
  // utime and stime are fields 14 and 15 of stat (11 and 12 after the "(comm) " prefix is cut).
  return (Number(fields[11]) + Number(fields[12])) * 10;
}
const cpuMs = (u: NodeJS.CpuUsage): number => Math.round((u.user + u.system) / 1000);

/** The machine's CPU time so far, and how much of it the hypervisor gave to other guests (steal), from /proc/stat. */
function machineTicks(): { total: number; steal: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { total: f.reduce((a, b) => a + b, 0), steal: f[7] ?? 0 };
}

const IMAGE_BYTES = 1 << 20;
const self = fileURLToPath(import.meta.url);
const { values } = parseArgs({
  options: {
    role: { type: 'string' }, io: { type: 'string' }, port: { type: 'string' }, bytes: { type: 'string' }, runs: { type: 'string', default: '3' },
    chunk: { type: 'string' }, window: { type: 'string' },
    'line-baud': { type: 'string', default: '12000000' }, 'line-runs': { type: 'string', default: '3' },
    'update-runs': { type: 'string', default: '25' }, part: { type: 'string', default: 'all' },
  },
});

/**
 * How a baseline moves raw bytes: the link's byte path, serialport's stream, the link's path with
 * a verifying reader, or with the protocol's minimum work at both ends (see the header).
 */
const RAW_IOS = ['io', 'stream', 'verified', 'minimum'] as const;
type RawIo = (typeof RAW_IOS)[number];

interface RawPort {
  /** Resolves when the port can take more (after 'drain' if it asked to wait). */
  write(bytes: Uint8Array): Promise<void>;
  onData(handler: (chunk: Buffer) => void): void;
  close(): Promise<void>;
}

async function openRaw(path: string, io: RawIo): Promise<RawPort> {
  if (io !== 'stream') {
    const port = await SerialPortIo.open(path, 921600);
    return {
      write: (b) => (port.write(b) ? Promise.resolve() : new Promise((r) => port.once('drain', r))),
      onData: (h) => void port.on('data', h),
      close: () => port.close(),
    };
  }
  const port = new SerialPort({ path, baudRate: 921600, autoOpen: false });
  await new Promise<void>((resolve, reject) => port.open((e) => (e ? reject(e) : resolve())));
  return {
    write: (b) => (port.write(b) ? Promise.resolve() : new Promise((r) => port.once('drain', r))),
    onData: (h) => void port.on('data', h),
    close: () => new Promise((r) => port.close(() => r())),
  };
}

const say = (o: Record<string, unknown>): void => void process.stdout.write(`${JSON.stringify(o)}\n`);

// ---- child roles --------------------------------------------------------------------------------

/** Counts bytes until `bytes` arrived, then reports; repeats for the next run. */
async function reader(path: string, bytes: number, io: RawIo): Promise<void> {
  const port = await openRaw(path, io);
  let got = 0;
  let reads = 0;
  let cpu = process.cpuUsage();
  // The verifying reader's checks, restarted for every image.
  const verify = io === 'verified' || io === 'minimum';
  const kept = io === 'minimum' ? Buffer.allocUnsafe(bytes) : null;
  let hash = createHash('sha256');
  let crc = 0;
  port.onData((d: Buffer) => {
    if (got === 0) cpu = process.cpuUsage();
    if (kept) d.copy(kept, got); // got < bytes here: runs never overlap
    got += d.length;
    reads++;
    if (verify) {
      hash.update(d);
      crc = crc32(d, crc);
    }
    if (got >= bytes) {
      if (verify) {
        hash.digest();
        hash = createHash('sha256');
        crc = 0;
      }
      const used = process.cpuUsage(cpu);
      say({ event: 'received', bytes: got, reads, cpuMs: Math.round((used.user + used.system) / 1000) });
      reads = 0;
      got -= bytes;
    }
  });
  say({ event: 'ready' });
}

/**
 * A device: the real engine (budgets that admit a 1 MiB image) behind its intake and the UART
 * listener. The 1 MiB image is unloaded after each flash (every run is a whole transfer); other
 * images stay, so flashing them again is CURRENT.
 */
async function listener(path: string): Promise<void> {
  const transport = new UartPortTransport({ path });
  await transport.open();
  const engine = new ProvisioningEngine({
    clock: systemClock, events: nullEventSink,
    config: { maxImageBytes: IMAGE_BYTES, imageLimits: { code: IMAGE_BYTES, rodata: IMAGE_BYTES } },
  });
  const intake = new DeviceIntake({ engine, clock: systemClock, events: nullEventSink });
  const l = new UartListener(transport, intake, { source: `uart:${path}`, partials: new MemoryPartialStore() });
  let cpu = process.cpuUsage();
  l.on('event', (e: { type: string; pid?: number; totalBytes?: number }) => {
    if (e.type === 'open') cpu = process.cpuUsage();
    if ((e.type === 'ready' || e.type === 'current') && e.pid !== undefined) {
      if (e.totalBytes === IMAGE_BYTES) engine.unload(e.pid);
      // After the RESULT frame went out: report the listener's bytes on the wire for this run.
      setTimeout(() => {
        const used = process.cpuUsage(cpu);
        const reads = transport.counters.readChunks;
        transport.counters.readChunks = 0;
        say({ event: "done", reads, bytesWritten: transport.counters.bytesWritten, cpuMs: Math.round((used.user + used.system) / 1000), sysMs: Math.round(used.system / 1000) });
        transport.counters.bytesWritten = 0;
      }, 20);
    }
  });
  l.start();
  say({ event: 'ready' });
}

// ---- parent -------------------------------------------------------------------------------------

function child(role: string, port: string, io: RawIo = 'io'): { proc: ChildProcess; next: (event: string) => Promise<Record<string, unknown>> } {
  const proc = spawn(process.execPath, [...(process.env['BENCH_PROF'] && role === 'listener' ? ['--cpu-prof', '--cpu-prof-dir=' + process.env['BENCH_PROF']] : []), '--import', 'tsx', self, '--role', role, '--io', io, '--port', port, '--bytes', String(IMAGE_BYTES)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const queue: Array<Record<string, unknown>> = [];
  const waiting: Array<{ event: string; resolve: (l: Record<string, unknown>) => void; reject: (e: Error) => void }> = [];
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    const msg = JSON.parse(line) as Record<string, unknown>;
    const w = waiting.findIndex((x) => x.event === msg['event']);
    if (w >= 0) waiting.splice(w, 1)[0]!.resolve(msg);
    else queue.push(msg);
  });
  let exited = false;
  proc.once('exit', (code) => {
    exited = true;
    for (const w of waiting.splice(0)) w.reject(new Error(`bench child (${role}) exited with ${String(code)} while waiting for "${w.event}"`));
  });
  return {
    proc,
    next: (event) => {
      const i = queue.findIndex((m) => m['event'] === event);
      if (i >= 0) return Promise.resolve(queue.splice(i, 1)[0]!);
      if (exited) return Promise.reject(new Error(`bench child (${role}) has exited`));
      return new Promise((resolve, reject) => waiting.push({ event, resolve, reject }));
    },
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function makeImage(): Uint8Array {
  const body = IMAGE_BYTES - 96;
  const code = new Uint8Array(Math.floor(body / 8) * 4);
  const rodata = new Uint8Array(body - code.length);
  for (let i = 0; i < code.length; i++) code[i] = (i * 131 + 7) & 0xff;
  for (let i = 0; i < rodata.length; i++) rodata[i] = (i * 17 + 3) & 0xff;
  const r = buildImage({ code, rodata, appName: 'bench_1mib', allowMultipleInstances: true, limits: { maxCode: IMAGE_BYTES, maxRodata: IMAGE_BYTES } });
  if (!r.ok) throw new Error(r.error.message);
  return r.value;
}

interface RawResult { ms: number; readerCpuMs: number; reads: number; writerCpuMs: number; socatCpuMs: number | null }

/** One raw transfer: this process writes 1 MiB, the reader child reports when it has it all. */
async function rawRun(writer: RawPort, reader: ReturnType<typeof child>, payload: Buffer, socatPid: number | null, announce = false): Promise<RawResult> {
  const socat0 = socatPid === null ? 0 : procCpuMs(socatPid);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  // What a master must know before its first byte: the OPEN frame carries both.
  if (announce) {
    createHash('sha256').update(payload).digest();
    crc32(payload);
  }
  const piece = 16 * 1024; // the link's transport also coalesces frames into writes of up to 16 KiB
  for (let off = 0; off < payload.length; off += piece) {
    await writer.write(payload.subarray(off, off + piece));
  }
  const r = await reader.next('received');
  const ms = performance.now() - t0;
  return {
    ms, readerCpuMs: Number(r['cpuMs']), reads: Number(r['reads']), writerCpuMs: cpuMs(process.cpuUsage(cpu0)),
    socatCpuMs: socatPid === null ? null : procCpuMs(socatPid) - socat0,
  };
}

interface Link { master: UartPortTransport; device: ReturnType<typeof child> }

/** A master here and a device (listener + engine) in a child, on the two ends of a line. */
async function startLink(a: string, b: string, cleanup: Array<() => unknown>): Promise<Link> {
  const device = child('listener', b);
  cleanup.push(() => device.proc.kill('SIGTERM'));
  await device.next('ready');
  const master = new UartPortTransport({ path: a });
  await master.open();
  cleanup.push(() => master.close());
  return { master, device };
}

/** One flash of the image; returns the run's figures (throughput, wire efficiency, CPU per stage). */
async function linkRun(link: Link, image: Uint8Array, settings: { chunkSize?: number; window?: number }, socatPid: number | null): Promise<Record<string, number | null> & { ms: number; wireEfficiency: number }> {
  const { master, device } = link;
  const before = master.counters.bytesWritten;
  const cpu0 = process.cpuUsage();
  const socat0 = socatPid === null ? 0 : procCpuMs(socatPid);
  const t0 = performance.now();
  const res = await sendImage(master, image, settings);
  const ms = performance.now() - t0;
  if (!res.ok) throw new Error(`flash failed: ${JSON.stringify(res.error)}`);
  const cpu = process.cpuUsage(cpu0);
  const socatCpuMs = socatPid === null ? null : procCpuMs(socatPid) - socat0;
  const done = await device.next('done');
  const listenerBytes = Number(done['bytesWritten']);
  const masterBytes = master.counters.bytesWritten - before;
  return {
    chunk: res.value.chunkSize, window: res.value.window, ms: +ms.toFixed(1), bytesPerSecond: Math.round(IMAGE_BYTES / ms * 1000),
    masterWireBytes: masterBytes, listenerWireBytes: listenerBytes, wireEfficiency: +(IMAGE_BYTES / (masterBytes + listenerBytes)).toFixed(4),
    retransmits: res.value.retransmits, windowStallMs: Math.round(res.value.windowStallMs),
    masterCpuMs: cpuMs(cpu), socatCpuMs, listenerCpuMs: Number(done['cpuMs']), listenerReads: Number(done['reads']),
  };
}

async function main(): Promise<void> {
  const runs = Math.max(1, Number(values.runs));
  const lineBaud = Number(values['line-baud']);
  const lineRuns = Math.max(1, Number(values['line-runs']));
  // Defaults unless --chunk/--window say otherwise (to explore; the goals are for the defaults).
  const settings = { ...(values.chunk ? { chunkSize: Number(values.chunk) } : {}), ...(values.window ? { window: Number(values.window) } : {}) };
  const image = makeImage();
  const payload = Buffer.from(image);
  const ticks0 = machineTicks();

  // Everything started is stopped again, whatever fails.
  const cleanup: Array<() => unknown> = [];
  const raw: number[] = [];
  const rawStream: number[] = [];
  const rawVerified: number[] = [];
  const rawMinimum: number[] = [];
  const link: number[] = [];
  const efficiency: number[] = [];
  const cpu = { raw: [] as number[], link: [] as number[] };
  const lineRaw: number[] = [];
  const lineLink: number[] = [];
  try {
    // Baselines: a raw pty pair per byte path, each read by a child process.
    const baselines: Array<{ measure: string; pair: PtyPair; reader: ReturnType<typeof child>; writer: RawPort; results: number[] }> = [];
    for (const [io, measure, results] of [['io', 'raw_pty', raw], ['stream', 'raw_pty_stream', rawStream], ['verified', 'raw_pty_verified', rawVerified], ['minimum', 'raw_pty_minimum', rawMinimum]] as const) {
      const pair = await startPtyPair();
      cleanup.push(() => pair.stop());
      const reader = child('reader', pair.b, io);
      cleanup.push(() => reader.proc.kill('SIGTERM'));
      await reader.next('ready');
      const writer = await openRaw(pair.a, io);
      cleanup.push(() => writer.close());
      baselines.push({ measure, pair, reader, writer, results });
    }
    // Link: its own pty pair, the device in a child process.
    const linkPair = await startPtyPair();
    cleanup.push(() => linkPair.stop());
    const ptyLink = await startLink(linkPair.a, linkPair.b, cleanup);

    // Interleaved, so all see the same machine load.
    for (let i = 0; i < runs; i++) {
      for (const base of baselines) {
        const r = await rawRun(base.writer, base.reader, payload, base.pair.pid, base.measure === 'raw_pty_minimum');
        base.results.push(IMAGE_BYTES / r.ms * 1000);
        if (base.measure === 'raw_pty') cpu.raw.push(r.writerCpuMs + r.readerCpuMs + (r.socatCpuMs ?? 0));
        say({ bench: 'uart', measure: base.measure, run: i, bytes: IMAGE_BYTES, ms: +r.ms.toFixed(1), bytesPerSecond: Math.round(IMAGE_BYTES / r.ms * 1000),
          writerCpuMs: r.writerCpuMs, socatCpuMs: r.socatCpuMs, readerCpuMs: r.readerCpuMs, readerReads: r.reads });
      }
      const r = await linkRun(ptyLink, image, settings, linkPair.pid);
      link.push(IMAGE_BYTES / r.ms * 1000);
      efficiency.push(r.wireEfficiency);
      cpu.link.push(Number(r['masterCpuMs']) + Number(r['listenerCpuMs']) + Number(r['socatCpuMs'] ?? 0));
      say({ bench: 'uart', measure: 'flash_1mib', run: i, bytes: IMAGE_BYTES, ...r });
    }

    // The same two transfers over a cable with a real line rate (see test/support/paced-cable.ts).
    if (lineBaud > 0) {
      const rawCable = await startPacedCable(lineBaud);
      cleanup.push(() => rawCable.stop());
      const reader = child('reader', rawCable.b, 'io');
      cleanup.push(() => reader.proc.kill('SIGTERM'));
      await reader.next('ready');
      const writer = await openRaw(rawCable.a, 'io');
      cleanup.push(() => writer.close());
      const linkCable = await startPacedCable(lineBaud);
      cleanup.push(() => linkCable.stop());
      const cableLink = await startLink(linkCable.a, linkCable.b, cleanup);
      for (let i = 0; i < lineRuns; i++) {
        const rr = await rawRun(writer, reader, payload, null);
        lineRaw.push(IMAGE_BYTES / rr.ms * 1000);
        say({ bench: 'uart', measure: 'raw_line', run: i, baud: lineBaud, bytes: IMAGE_BYTES, ms: +rr.ms.toFixed(1), bytesPerSecond: Math.round(IMAGE_BYTES / rr.ms * 1000) });
        const lr = await linkRun(cableLink, image, settings, null);
        lineLink.push(IMAGE_BYTES / lr.ms * 1000);
        say({ bench: 'uart', measure: 'flash_line', run: i, baud: lineBaud, bytes: IMAGE_BYTES, ...lr });
      }
    }
  } finally {
    for (const c of cleanup.reverse()) await c();
  }
  const ticks1 = machineTicks();
  const rawMedian = median(raw);
  const rawStreamMedian = median(rawStream);
  const linkMedian = median(link);
  say({
    bench: 'uart', measure: 'summary', runs, imageBytes: IMAGE_BYTES, chunk: settings.chunkSize ?? DEFAULT_CHUNK, window: settings.window ?? DEFAULT_WINDOW,
    rawPtyBytesPerSecond: Math.round(rawMedian), flashBytesPerSecond: Math.round(linkMedian),
    throughputRatio: +(linkMedian / rawMedian).toFixed(3), throughputGoal: 0.8,
    // The ceiling for throughputRatio: a reader that only verifies (see raw_pty_verified).
    verifiedRawRatio: +(median(rawVerified) / rawMedian).toFixed(3),
    throughputRatioVsVerified: +(linkMedian / median(rawVerified)).toFixed(3),
    // The same two ratios taken run by run (each link run against the baselines measured just
    // before it), then the median: less moved by a machine whose load drifts during the bench.
    throughputRatioPaired: +median(link.map((l, i) => l / raw[i]!)).toFixed(3),
    verifiedRawRatioPaired: +median(rawVerified.map((v, i) => v / raw[i]!)).toFixed(3),
    // The tightest ceiling: the protocol's minimum work at both ends (see raw_pty_minimum).
    minimumRawRatio: +(median(rawMinimum) / rawMedian).toFixed(3),
    minimumRawRatioPaired: +median(rawMinimum.map((v, i) => v / raw[i]!)).toFixed(3),
    throughputRatioVsMinimum: +(linkMedian / median(rawMinimum)).toFixed(3),
    rawPtyStreamBytesPerSecond: Math.round(rawStreamMedian), throughputRatioVsStream: +(linkMedian / rawStreamMedian).toFixed(3),
    wireEfficiency: +median(efficiency).toFixed(4), efficiencyGoal: 0.97,
    // CPU of all three stages per MiB (writer/master + socat + reader/device): on a 2-core machine
    // the time per MiB follows it.
    rawCpuMsPerMiB: median(cpu.raw), flashCpuMsPerMiB: median(cpu.link),
    ...(lineBaud > 0 ? {
      lineBaud, lineRuns, rawLineBytesPerSecond: Math.round(median(lineRaw)), flashLineBytesPerSecond: Math.round(median(lineLink)),
      lineThroughputRatio: +(median(lineLink) / median(lineRaw)).toFixed(3),
    } : {}),
    // Both measurements cross process boundaries the same way: raw = this process writes, a child
    // reads; link = this process is the master, a child is the device. The machine's load decides
    // a lot on a shared box, so it is printed with the result.
    processes: 'separate (writer/master here, reader/device in a child)', loadAverage1m: +loadavg()[0]!.toFixed(2),
    // CPU time taken by other guests of the host during the run: above a few percent, the figures
    // say more about the neighbours than about the link.
    stealPercent: +((100 * (ticks1.steal - ticks0.steal)) / Math.max(1, ticks1.total - ticks0.total)).toFixed(1),
  });
}

// ---- updates -----------------------------------------------------------------------------------

const UPDATE_BYTES = 64 << 10;

/** Bytes both ends of a link wrote during `fn` (the master's counter here, the device's from its 'done'). */
async function overLink(link: Link, fn: () => Promise<FlashOutcome>): Promise<{ ms: number; wireBytes: number; dataBytesSent: number; outcome: string }> {
  const before = link.master.counters.bytesWritten;
  const t0 = performance.now();
  const r = await fn();
  const ms = performance.now() - t0;
  const done = await link.device.next('done');
  return { ms, wireBytes: link.master.counters.bytesWritten - before + Number(done['bytesWritten']), dataBytesSent: r.dataBytesSent, outcome: r.outcome };
}

async function updates(): Promise<void> {
  const runs = Math.max(1, Number(values['update-runs']));
  const cleanup: Array<() => unknown> = [];
  const full: number[] = [];
  const reflash: number[] = [];
  const fullBytes: number[] = [];
  const reflashBytes: number[] = [];
  const intakeMs: number[] = [];
  const rawMs: number[] = [];
  const minimumMs: number[] = [];
  const ticks0 = machineTicks();
  try {
    // (a) Re-flash of an unchanged image against a whole transfer of it, over the pty link.
    const pair = await startPtyPair();
    cleanup.push(() => pair.stop());
    const link = await startLink(pair.a, pair.b, cleanup);
    const image = sensorOfSize(1, UPDATE_BYTES);
    const flash = async (force: boolean): Promise<FlashOutcome> => {
      const r = await sendImage(link.master, image, { appName: 'sensor_app', force });
      if (!r.ok) throw new Error(`flash failed: ${JSON.stringify(r.error)}`);
      return r.value;
    };
    await overLink(link, () => flash(false)); // the first install, not measured
    for (let i = 0; i < runs; i++) {
      const f = await overLink(link, () => flash(true));
      if (f.outcome !== 'updated') throw new Error(`a forced flash of the running image should be an update, got ${f.outcome}`);
      full.push(f.ms);
      fullBytes.push(f.wireBytes);
      say({ bench: 'uart', measure: 'flash_64k_full', run: i, bytes: image.length, ms: +f.ms.toFixed(2), wireBytes: f.wireBytes, dataBytesSent: f.dataBytesSent });
      const c = await overLink(link, () => flash(false));
      if (c.outcome !== 'current') throw new Error(`flashing the running image should be CURRENT, got ${c.outcome}`);
      reflash.push(c.ms);
      reflashBytes.push(c.wireBytes);
      say({ bench: 'uart', measure: 'reflash_64k_current', run: i, bytes: image.length, ms: +c.ms.toFixed(2), wireBytes: c.wireBytes, dataBytesSent: c.dataBytesSent });
    }

    // (b) An on-device update through the intake (mapped flash and FRAM files) against a raw write+fsync.
    const dir = mkdtempSync(join(tmpdir(), 'bench-uart-update-'));
    cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
    const dev = await openSimulatedDevice({ name: 'bench', stateDir: join(dir, 'device'), events: nullEventSink, confirmWindowMs: 3_600_000 });
    cleanup.push(() => dev.close());
    const WARMUP = 10; // the JIT needs about this many updates before the timing settles
    const builds = Array.from({ length: runs + WARMUP }, (_, i) => sensorOfSize(100 + i, UPDATE_BYTES));
    // What the announce carries (the master's work, done before the transfer): not part of the device's time.
    const announced = new Map(builds.map((b) => [b, { crc32: crc32(b), sha256: createHash('sha256').update(b).digest('hex') }]));
    const update = async (bytes: Uint8Array): Promise<string> => {
      const opened = dev.intake.open({ source: 'bench', totalBytes: bytes.length, ...announced.get(bytes)! });
      if (!opened.ok || opened.value.kind !== 'receiving') throw new Error(`intake.open: ${JSON.stringify(opened)}`);
      const id = opened.value.id;
      // As the link feeds it: one write per 8 KiB frame.
      for (let at = 0; at < bytes.length; at += 8192) {
        const w = dev.intake.write(id, at, bytes.subarray(at, at + 8192));
        if (!w.ok) throw new Error(`intake.write: ${w.error.message}`);
      }
      const v = await dev.intake.finish(id);
      if (!v.ok) throw new Error(`intake.finish: ${v.error.code} ${v.error.reason}: ${v.error.message}`);
      return v.value.outcome;
    };
    const rawPath = join(dir, 'raw.bin');
    const rawWrite = (bytes: Uint8Array): void => {
      const fd = openSync(rawPath, 'w');
      writeSync(fd, bytes);
      fsyncSync(fd);
      closeSync(fd);
    };
    // The least durable I/O any power-fail-safe A/B commit with a values snapshot must do on these files:
    // the image into the inactive slot and the old image's values into FRAM, both durable, then the
    // status record that switches, durable (three flushes in order; the image's and the snapshot's may
    // overlap, but the filesystem journal commits them one after the other).
    const flashFd = openSync(join(dir, 'min-flash.bin'), 'w+');
    const framFd = openSync(join(dir, 'min-fram.bin'), 'w+');
    cleanup.push(() => { closeSync(flashFd); closeSync(framFd); });
    const snapshot = new Uint8Array(64);
    const status = new Uint8Array(64);
    const minimumCommit = (bytes: Uint8Array, i: number): void => {
      writeSync(flashFd, bytes, 0, bytes.length, (i % 2) * 0x20000);
      writeSync(framFd, snapshot, 0, snapshot.length, 0);
      fsyncSync(framFd);
      fsyncSync(flashFd);
      status[0] = i & 0xff;
      writeSync(flashFd, status, 0, status.length, 0x40000);
      fsyncSync(flashFd);
    };
    // Not measured: the first install, then updates and raw writes until both paths are warm (JIT, page cache).
    for (let i = 0; i < WARMUP; i++) {
      await update(builds[i]!);
      await dev.intake.confirmNow();
      rawWrite(builds[i]!);
      minimumCommit(builds[i]!, i);
    }
    for (let i = 0; i < runs; i++) {
      const bytes = builds[i + WARMUP]!;
      // The SHA-256 the announce carries is the master's work; the device's work starts at open.
      const t0 = performance.now();
      const outcome = await update(bytes);
      const ms = performance.now() - t0;
      if (outcome !== 'updated') throw new Error(`expected an update, got ${outcome}`);
      await dev.intake.confirmNow(); // outside the timing: it happens a confirm window later
      intakeMs.push(ms);
      say({ bench: 'uart', measure: 'update_64k_intake', run: i, bytes: bytes.length, ms: +ms.toFixed(3) });
      const r0 = performance.now();
      rawWrite(bytes);
      const rms = performance.now() - r0;
      rawMs.push(rms);
      say({ bench: 'uart', measure: 'raw_write_fsync_64k', run: i, bytes: bytes.length, ms: +rms.toFixed(3) });
      const m0 = performance.now();
      minimumCommit(bytes, i);
      const mms = performance.now() - m0;
      minimumMs.push(mms);
      say({ bench: 'uart', measure: 'raw_commit_minimum_64k', run: i, bytes: bytes.length, ms: +mms.toFixed(3) });
    }
  } finally {
    for (const c of cleanup.reverse()) await c();
  }
  const ticks1 = machineTicks();
  say({
    bench: 'uart', measure: 'summary_update', runs, imageBytes: UPDATE_BYTES,
    fullFlashMs: +median(full).toFixed(2), reflashMs: +median(reflash).toFixed(2), reflashTimeRatio: +(median(reflash) / median(full)).toFixed(4),
    fullFlashWireBytes: median(fullBytes), reflashWireBytes: median(reflashBytes), reflashByteRatio: +(median(reflashBytes) / median(fullBytes)).toFixed(4),
    intakeUpdateMs: +median(intakeMs).toFixed(3), rawWriteFsyncMs: +median(rawMs).toFixed(3),
    updateRatio: +(median(intakeMs) / median(rawMs)).toFixed(2),
    updateRatioPaired: +median(intakeMs.map((m, i) => m / rawMs[i]!)).toFixed(2), updateGoal: 3,
    rawCommitMinimumMs: +median(minimumMs).toFixed(3), minimumRatio: +(median(minimumMs) / median(rawMs)).toFixed(2),
    updateRatioVsMinimum: +(median(intakeMs) / median(minimumMs)).toFixed(2),
    loadAverage1m: +loadavg()[0]!.toFixed(2),
    stealPercent: +((100 * (ticks1.steal - ticks0.steal)) / Math.max(1, ticks1.total - ticks0.total)).toFixed(1),
  });
}

if (values.role === 'reader' || values.role === 'listener') {
  // Exit through process.exit so a --cpu-prof profile gets written.
  process.once('SIGTERM', () => process.exit(0));
  const io = RAW_IOS.find((x) => x === values.io) ?? 'io';
  if (values.role === 'reader') await reader(values.port!, Number(values.bytes), io);
  else await listener(values.port!);
} else {
  if (values.part !== 'update') await main();
  await updates();
}
