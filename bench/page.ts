/**
 * Live page bench (issue 20): what the page and its event stream cost `serve`. One JSON object per
 * line ({"bench":"page","measure":...}), each figure next to a baseline measured in the same run, then
 * a `summary` with each goal and whether it passed (a missed goal is reported, never an exit code).
 *
 *   npx tsx bench/page.ts [--pairs N] [--kib K] [--jobs J]   (defaults: 9 pairs, a 64 KiB image, 3 jobs a sample)
 *
 * The rig: a cross-process virtual CAN hub hosted here with the 1 Mbit/s timing model, 16 simulated
 * devices in this process (flash and FRAM files behind a device intake and a CanListener each), and a
 * real `serve` process (built CLI when fresh, else tsx) with the hub as its master link `bus`, a state
 * dir and `--http-port 0`. The devices live here, not in `serve`, so the CPU measured is the gateway's
 * own: the master, the job service, the control port and (in one mode) the page.
 *
 * 1. page_cpu — goal: the page adds ≤ 2 % CPU to `serve` during a 16-node job. Each run is one job
 *    (`job.submit` over the control port; a sample is 3 such jobs back to back, so that one GC more
 *    or less does not decide it; a 64 KiB image alternating between two builds so every run
 *    updates all 16 nodes) from submit until the daemon's rescan after it has ended; the CPU time of
 *    the `serve` process over that window is the sum of its threads' run time (/proc/PID/task/*
 *    /schedstat, nanoseconds). Mode `baseline`: headless Chromium runs but shows about:blank. Mode
 *    `page`: the same Chromium shows the live page (state loaded, event stream open) for the whole
 *    job. The modes alternate (order flipped every pair) after a warm-up pair; medians of each, their
 *    ratio and the median of the paired ratios. Job progress polling is the same in both modes.
 * 2. initial_load — goal: ≤ 200 KiB transferred for the page's first load (HTML, script, style, the
 *    state document; the event stream's bytes after it opened are not a load), counted by Chromium
 *    (CDP Network.loadingFinished encodedDataLength, headers included). Baseline: the state document
 *    alone.
 */
import { readFileSync, readdirSync, mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { ControlClient } from '../src/gateway/control/client.js';
import { startVirtualHub, type VirtualHub } from '../src/link/can/virtual-net.js';
import { openBenchDevices, settled } from './support/can-devices.js';
import { startServe, type ServeChild } from '../test/support/serve-child.js';
import { sensorOfSize } from '../test/update-images.js';

// page.evaluate runs in the browser; the project compiles with Node's types only
declare const document: any;

const NODES = 16;
const CONFIRM_MS = 50;
const TOKEN = 'bench-page-operator-1';
const CHROMIUM = process.env['HSX_CHROMIUM'] ?? '/usr/bin/chromium';
const pairsArg = process.argv.indexOf('--pairs');
const PAIRS = pairsArg > 0 ? Number(process.argv[pairsArg + 1]) : 9;
const kibArg = process.argv.indexOf('--kib');
/** The job's image size (an image's code is at most 64 KiB): about 1.2 s to 16 nodes on a 1 Mbit/s bus. */
const IMAGE_KIB = kibArg > 0 ? Number(process.argv[kibArg + 1]) : 64;
const jobsArg = process.argv.indexOf('--jobs');
/** Jobs per sample, back to back: one 16-node job costs `serve` only ~80 ms of CPU, where one GC can be 20. */
const JOBS_PER_SAMPLE = jobsArg > 0 ? Number(process.argv[jobsArg + 1]) : 3;

const work = mkdtempSync(join(tmpdir(), 'hsx-bench-page-'));
const out = (o: Record<string, unknown>) => process.stdout.write(JSON.stringify(o) + '\n');
const say = (s: string) => process.stderr.write(`${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const round = (x: number, d = 4) => Math.round(x * 10 ** d) / 10 ** d;
const sleep = (ms: number) => new Promise<void>((res) => setTimeout(res, ms));
const goals: Array<{ measure: string; goal: string; value: number; pass: boolean }> = [];

/** CPU time (ns) of every thread of a process so far. */
function processCpuNs(pid: number): number {
  let ns = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${task}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* a thread that ended between the listing and the read */
    }
  }
  return ns;
}


/** One job to every node, submit → finished → the daemon's rescan after it; the serve process's CPU over that window. */
async function oneJob(c: ControlClient, pid: number, image: string): Promise<{ cpuMs: number; wallMs: number }> {
  const before = await c.request('inventory', { link: 'bus' });
  if (!before.ok) throw new Error(`inventory: ${before.error.message}`);
  const scanned0 = ((before.value['links'] as Array<{ scanned_ts: number }>)[0]?.scanned_ts) ?? 0;
  const cpu0 = processCpuNs(pid);
  const t0 = performance.now();
  const r = await c.request('job.submit', { link: 'bus', image, nodes: `1-${NODES}` });
  if (!r.ok) throw new Error(`job.submit: ${r.error.message}`);
  const id = String((r.value['job'] as { id: string }).id);
  for (;;) {
    await sleep(100);
    const s = await c.request('job.status', { id });
    if (!s.ok) throw new Error(`job.status: ${s.error.message}`);
    const job = s.value['job'] as { state: string; targets: Array<{ state: string; outcome: string | null }> };
    if (job.state === 'QUEUED' || job.state === 'IN_PROGRESS') continue;
    if (job.state !== 'SUCCEEDED' || !job.targets.every((t) => t.outcome === 'updated' || t.outcome === 'installed')) throw new Error(`job ${id}: ${JSON.stringify(job)}`);
    break;
  }
  for (;;) {
    const inv = await c.request('inventory', { link: 'bus' });
    if (!inv.ok) throw new Error(`inventory: ${inv.error.message}`);
    if ((((inv.value['links'] as Array<{ scanned_ts: number }>)[0]?.scanned_ts) ?? 0) > scanned0) break;
    await sleep(100);
  }
  return { cpuMs: (processCpuNs(pid) - cpu0) / 1e6, wallMs: performance.now() - t0 };
}

async function showPage(page: Page, base: string): Promise<void> {
  await page.goto(base + '/');
  await page.waitForFunction(() => document.querySelector('#live')?.textContent === 'live' && document.querySelectorAll('#devices tbody tr[data-key]').length > 0, { timeout: 30_000 });
}

async function main(): Promise<void> {
  const hub = await startVirtualHub('127.0.0.1', 0, { bitrate: 1_000_000 });
  const devs = await openBenchDevices(hub, work, NODES, CONFIRM_MS);
  const images = join(work, 'images');
  mkdirSync(images);
  writeFileSync(join(images, 'a.hxe'), sensorOfSize(401, IMAGE_KIB * 1024, true)); // random code: the job moves the whole image (compression would shorten it)
  writeFileSync(join(images, 'b.hxe'), sensorOfSize(402, IMAGE_KIB * 1024, true));
  const config = join(work, 'gateway.toml');
  writeFileSync(config, [
    `[gateway]\nid = "bench-page"\nlog_level = "warn"\nstate_dir = "${join(work, 'gateway')}"\n`,
    `[control]\nlisten = "127.0.0.1:9998"\nimages_dir = "${images}"\n`,
    `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(TOKEN)}"\n`,
    `[[links.can]]\nname = "bus"\ninterface = "127.0.0.1:${hub.port}"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
  ].join('\n'));
  let serve: ServeChild | null = null;
  let browser: Browser | null = null;
  let client: ControlClient | null = null;
  try {
    serve = await startServe(config, ['--http-port', '0']);
    const serving = serve.lines.find((l) => l['type'] === 'serving') as { http: { host: string; port: number }; pid: number; inventory: Record<string, string[]> };
    if ((serving.inventory['bus'] ?? []).length !== NODES) throw new Error(`start-up scan found ${JSON.stringify(serving.inventory)}`);
    const base = `http://${serving.http.host}:${serving.http.port}`;
    const pid = serving.pid;
    const c = await ControlClient.connect(serve.control, { token: TOKEN, timeoutMs: 60_000 });
    if (!c.ok) throw new Error(c.error.message);
    client = c.value;
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    const page = await browser.newPage();
    await page.setViewport({ width: 1400, height: 900 });
    // the token, as the page's own form would keep it, before the page is first shown
    await page.goto(base + '/');
    await page.evaluate((t: string) => (globalThis as any).sessionStorage.setItem('hsx-token', t), TOKEN);

    // 2. initial load, counted by the browser
    const cdp = await page.createCDPSession();
    await cdp.send('Network.enable');
    await cdp.send('Network.setCacheDisabled', { cacheDisabled: true });
    const sizes = new Map<string, { url: string; bytes: number }>();
    const urls = new Map<string, string>();
    cdp.on('Network.requestWillBeSent', (e: { requestId: string; request: { url: string } }) => urls.set(e.requestId, e.request.url));
    cdp.on('Network.loadingFinished', (e: { requestId: string; encodedDataLength: number }) => sizes.set(e.requestId, { url: urls.get(e.requestId) ?? '?', bytes: e.encodedDataLength }));
    await page.goto('about:blank');
    sizes.clear();
    await showPage(page, base);
    const loaded = [...sizes.values()];
    const total = loaded.reduce((a, b) => a + b.bytes, 0);
    const stateBytes = loaded.filter((l) => l.url.endsWith('/api/state')).reduce((a, b) => a + b.bytes, 0);
    out({ bench: 'page', measure: 'initial_load', bytes: total, kib: round(total / 1024, 1), files: loaded.map((l) => ({ path: new URL(l.url).pathname, bytes: l.bytes })), baseline_state_bytes: stateBytes, ratio: round(total / Math.max(1, stateBytes), 2), goal_bytes: 200 * 1024 });
    goals.push({ measure: 'initial_load', goal: '≤ 200 KiB', value: total, pass: total <= 200 * 1024 });
    await cdp.detach();

    // 1. CPU with and without the page, alternated; a warm-up pair first
    let flip = 0;
    const image = (): string => (flip++ % 2 === 0 ? 'a.hxe' : 'b.hxe');
    const runMode = async (mode: 'baseline' | 'page'): Promise<{ cpuMs: number; wallMs: number }> => {
      if (mode === 'page') await showPage(page, base);
      else await page.goto('about:blank');
      let r = { cpuMs: 0, wallMs: 0 };
      for (let j = 0; j < JOBS_PER_SAMPLE; j++) {
        await settled(devs);
        const one = await oneJob(client!, pid, image());
        r = { cpuMs: r.cpuMs + one.cpuMs, wallMs: r.wallMs + one.wallMs };
      }
      if (mode === 'page') {
        const shown = await page.$$eval('#devices tbody tr[data-key]', (rows: any[]) => rows.length);
        if (shown !== NODES) throw new Error(`the page showed ${shown} devices`);
      }
      return r;
    };
    await runMode('baseline');
    await runMode('page');
    const base0: number[] = [];
    const withPage: number[] = [];
    const paired: number[] = [];
    for (let i = 0; i < PAIRS; i++) {
      const order: Array<'baseline' | 'page'> = i % 2 === 0 ? ['baseline', 'page'] : ['page', 'baseline'];
      const got: Record<string, { cpuMs: number; wallMs: number }> = {};
      for (const mode of order) got[mode] = await runMode(mode);
      const b = got['baseline']!;
      const p = got['page']!;
      base0.push(b.cpuMs);
      withPage.push(p.cpuMs);
      paired.push(p.cpuMs / b.cpuMs);
      out({ bench: 'page', measure: 'page_cpu_run', pair: i + 1, baseline_cpu_ms: round(b.cpuMs, 1), page_cpu_ms: round(p.cpuMs, 1), ratio: round(p.cpuMs / b.cpuMs), baseline_wall_ms: round(b.wallMs, 0), page_wall_ms: round(p.wallMs, 0) });
    }
    const mb = median(base0);
    const mp = median(withPage);
    const mr = median(paired);
    out({ bench: 'page', measure: 'page_cpu', nodes: NODES, image_bytes: IMAGE_KIB * 1024, pairs: PAIRS, jobs_per_sample: JOBS_PER_SAMPLE, baseline_cpu_ms_median: round(mb, 1), page_cpu_ms_median: round(mp, 1), ratio_of_medians: round(mp / mb), median_paired_ratio: round(mr), goal_ratio: 1.02 });
    goals.push({ measure: 'page_cpu', goal: 'median paired ratio ≤ 1.02', value: round(mr), pass: mr <= 1.02 });
  } finally {
    await browser?.close().catch(() => undefined);
    client?.close();
    if (serve && serve.child.exitCode === null && serve.child.signalCode === null) {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
    for (const d of devs) {
      d.listener.stop();
      await d.ep.close();
      await d.dev.close();
    }
    await hub.close();
  }
}

const load0 = loadavg()[0]!;
let failed = false;
try {
  await main();
} catch (e) {
  failed = true;
  say(`bench/page failed: ${(e as Error).stack ?? String(e)}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
out({ bench: 'page', measure: 'summary', ok: !failed, goals, passed: goals.filter((g) => g.pass).length, missed: goals.filter((g) => !g.pass).length, loadAverage1m: [round(load0, 2), round(loadavg()[0]!, 2)] });
process.exit(failed ? 1 : 0);
