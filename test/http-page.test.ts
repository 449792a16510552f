/**
 * The live page and /metrics (src/gateway/http/), end to end with real parts: a `serve` process
 * whose simulated CAN devices and master link sit on a cross-process virtual bus that models bus
 * timing (so a transfer takes long enough to watch), headless Chromium driven by puppeteer-core, and
 * `/metrics` read with a Prometheus text-format parser. Every wait is on the page, a line or a
 * reply, bounded; nothing is timed.
 *
 * Screenshots go under the directory printed by the test (HSX_PAGE_SHOTS to choose it).
 */
import test, { type ExecutionContext } from 'ava';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { ControlClient } from '../src/gateway/control/client.js';
import { startVirtualHub, type VirtualHub } from '../src/link/can/virtual-net.js';
import { ROOT } from './support/cli-argv.js';
import { startServe, type ServeChild } from './support/serve-child.js';
import { parsePromText } from './support/prom-text.js';
import { sensorOfSize, sha256Hex } from './update-images.js';

// The functions handed to page.evaluate/waitForFunction run in the browser; the project compiles with
// Node's types only, so the browser names they use are declared here, for this file.
declare const document: any;
type HTMLElement = any;
type HTMLInputElement = any;

const OPERATOR = 'page-operator-secret-1';
const VIEWER = 'page-viewer-secret-1';
const CHROMIUM = process.env['HSX_CHROMIUM'] ?? '/usr/bin/chromium';
const SHOTS = process.env['HSX_PAGE_SHOTS'] ?? mkdtempSync(join(tmpdir(), 'hsx-page-shots-'));

interface Rig {
  dir: string;
  config: string;
  hub: VirtualHub | null;
  image: Uint8Array;
}

/** A gateway config: `nodes` simulated devices on one master link (a timed cross-process bus, or an in-process one). */
async function rig(t: ExecutionContext, nodes: number, opts: { bitrate?: number; brokenPreload?: boolean } = {}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-page-'));
  const images = join(dir, 'images');
  mkdirSync(images);
  copyFileSync(join(ROOT, 'configs', 'sd', 'apps', 'sensor.hxe'), join(images, 'sensor.hxe'));
  // big enough that a transfer at the modelled bit rate takes a few seconds: the bars have time to move
  // (its code random, so the compressed image the CAN master sends since issue 25 is not much shorter)
  const image = sensorOfSize(20, 24 * 1024, true);
  writeFileSync(join(images, 'big.hxe'), image);
  const hub = opts.bitrate ? await startVirtualHub('127.0.0.1', 0, { bitrate: opts.bitrate }) : null;
  const r: Rig = { dir, config: join(dir, 'gateway.toml'), hub, image };
  t.teardown(async () => {
    await hub?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const iface = hub ? `127.0.0.1:${hub.port}` : `page-bus-${process.pid}-${Math.random().toString(36).slice(2)}`;
  const devices: string[] = [];
  let boot = '';
  if (opts.brokenPreload) {
    // every device boots from a preload directory whose one image is cut short: a failed boot, and
    // with max_failed_boots = 1 a boot alert
    const preload = join(dir, 'preload');
    mkdirSync(preload);
    writeFileSync(join(preload, 'broken.hxe'), readFileSync(join(ROOT, 'configs', 'sd', 'apps', 'sensor.hxe')).subarray(0, 100));
    boot = `[boot]\npreload_dir = "${preload}"\nmax_failed_boots = 1\n`;
  }
  for (let n = 1; n <= nodes; n++) devices.push(`[[devices]]\nname = "node${n}"\nstate_dir = "${join(dir, `node${n}`)}"\nnode_id = ${n}\n`);
  writeFileSync(r.config, [
    `[gateway]\nid = "page-test"\nlog_level = "warn"\nstate_dir = "${join(dir, 'gateway')}"\n`,
    `[control]\nlisten = "127.0.0.1:9998"\nimages_dir = "${images}"\n`,
    `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(OPERATOR)}"\n`,
    `[[control.tokens]]\nname = "watcher"\nrole = "viewer"\nsha256 = "${tokenHash(VIEWER)}"\n`,
    // the hub models the bus timing; the links need not model it again
    `[[links.can]]\nname = "bus"\ninterface = "${iface}"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
    boot,
    ...devices,
  ].join('\n'));
  return r;
}

async function serve(t: ExecutionContext, config: string): Promise<{ s: ServeChild; base: string }> {
  const s = await startServe(config, ['--http-port', '0']);
  t.teardown(async () => {
    if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    await s.exited;
  });
  const serving = s.lines.find((l) => l['type'] === 'serving') as { http: { host: string; port: number } | null };
  if (!serving.http) throw new Error('serve printed no http address');
  return { s, base: `http://${serving.http.host}:${serving.http.port}` };
}

async function browser(t: ExecutionContext): Promise<Browser> {
  const b = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  t.teardown(() => b.close());
  return b;
}

const scriptErrors = new WeakMap<Page, string[]>();

/** Opens the page and gives it a token through its own token form. */
async function openPage(t: ExecutionContext, b: Browser, base: string, token: string): Promise<Page> {
  const page = await b.newPage();
  await page.setViewport({ width: 1400, height: 900 });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  scriptErrors.set(page, errors);
  await page.goto(base + '/');
  await page.waitForSelector('#live');
  await page.type('#token', token);
  await page.click('#token-form button');
  await page.waitForFunction(() => document.querySelector('#live')?.textContent === 'live', { timeout: 30_000 });
  return page;
}

async function metrics(base: string, token = VIEWER): Promise<ReturnType<typeof parsePromText>> {
  const r = await fetch(base + '/metrics', { headers: { authorization: `Bearer ${token}` } });
  if (r.status !== 200) throw new Error(`/metrics: ${r.status}`);
  return parsePromText(await r.text());
}

const shot = async (page: Page, name: string, t: ExecutionContext): Promise<string> => {
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, name);
  await page.screenshot({ path, fullPage: true });
  t.log(`screenshot: ${path}`);
  process.stdout.write(`screenshot: ${path}\n`);
  return path;
};

test('an operator runs a job from the page: the bars move, every device ends READY with the new SHA-256, a failed target shows its error; the second run is SKIPPED; /metrics counts both', async (t) => {
  t.timeout(180_000);
  const r = await rig(t, 4, { bitrate: 250_000 });
  const { base } = await serve(t, r.config);
  const b = await browser(t);
  const page = await openPage(t, b, base, OPERATOR);
  const sha = sha256Hex(r.image);

  // four devices, all answered the start-up scan and run nothing yet
  await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr[data-key]').length === 4);
  t.deepEqual(await page.$$eval('#devices tbody tr', (rows) => rows.map((x) => (x as HTMLElement).dataset['status'])), ['EMPTY', 'EMPTY', 'EMPTY', 'EMPTY']);
  t.true(await page.$eval('#submit-form', (e) => (globalThis as any).getComputedStyle(e).display !== 'none'), 'an operator sees the submit form');

  // job 1: the four nodes and node 9, which is not on the bus
  await page.select('#f-link', 'bus');
  await page.select('#f-image', 'big.hxe');
  await page.type('#f-nodes', '1-4,9');
  await page.click('#f-submit');
  await page.waitForFunction(() => /^j-1 /.test(document.querySelector('#f-result')?.textContent ?? ''));

  // the bars move: some device is part way
  await page.waitForFunction(() => [...document.querySelectorAll('#devices .bar')].some((b) => {
    const p = Number((b as HTMLElement).dataset['pct']);
    return p > 0 && p < 100;
  }), { timeout: 60_000 });
  t.pass('a progress bar moved');
  await shot(page, 'live-page-during-job.png', t);
  if (process.env['HSX_PAGE_DOC_SHOT']) {
    // the README's picture (HSX_PAGE_DOC_SHOT=1): part way through, when the bars show it best
    await page.waitForFunction(() => [...document.querySelectorAll('#devices .bar')].some((b) => Number((b as HTMLElement).dataset['pct']) >= 30), { timeout: 60_000 }).catch(() => undefined);
    await page.screenshot({ path: join(ROOT, 'docs', 'img', 'live-page.png') });
  }

  // each device row ends READY with the new image's SHA-256; node 9 fails with its error in the job list
  await page.waitForFunction((want: string) => {
    const rows = [...document.querySelectorAll('#devices tbody tr[data-key]')] as HTMLElement[];
    return rows.length === 4 && rows.every((x) => x.dataset['status'] === 'READY' && x.dataset['sha'] === want);
  }, { timeout: 90_000 }, sha);
  const shaCells = await page.$$eval('#devices [data-field=sha]', (cells) => cells.map((c) => c.textContent));
  t.deepEqual(shaCells, Array(4).fill(sha.slice(0, 12)), 'the rows show the short SHA-256');
  await page.waitForFunction(() => document.querySelector('#jobs tr[data-job="j-1"]')?.getAttribute('data-state') === 'TIMED_OUT', { timeout: 60_000 });
  const chips = await page.$$eval('#jobs tr[data-job="j-1"] .chip', (cs) => cs.map((c) => ({ target: (c as HTMLElement).dataset['target'], state: (c as HTMLElement).dataset['state'], text: c.textContent, bad: c.classList.contains('bad') })));
  t.deepEqual(chips.map((c) => `${c.target}:${c.state}`), ['1:SUCCEEDED', '2:SUCCEEDED', '3:SUCCEEDED', '4:SUCCEEDED', '9:TIMED_OUT']);
  const failed = chips.find((c) => c.target === '9')!;
  t.true(failed.bad, 'the failed target is highlighted');
  t.regex(failed.text ?? '', /ETIMEDOUT/, 'the failed target shows its error');
  t.true(await page.$eval('#jobs tr[data-job="j-1"]', (tr) => tr.classList.contains('failed')), 'the failed job row is highlighted');
  await shot(page, 'live-page-after-job.png', t);

  let m = await metrics(base);
  t.is(m.value('hsx_jobs_total', { state: 'TIMED_OUT' }), 1);
  t.is(m.value('hsx_job_targets_total', { link: 'bus', state: 'SUCCEEDED' }), 4);
  t.is(m.value('hsx_job_targets_total', { link: 'bus', state: 'TIMED_OUT' }), 1);
  t.is(m.value('hsx_link_transfers_total', { link: 'bus' }), 1);
  t.is(m.value('hsx_link_timeouts_total', { link: 'bus' }), 1, 'node 9 went silent');
  const bytes1 = m.value('hsx_link_bytes_sent_total', { link: 'bus' }) ?? 0;
  const frames1 = m.value('hsx_link_frames_sent_total', { link: 'bus' }) ?? 0;
  t.true(bytes1 > 0 && bytes1 < r.image.length * 2, `bytes sent ${bytes1} (a compressed image of ${r.image.length} bytes, repairs included)`);
  t.true(frames1 >= bytes1 / 8, `frames sent ${frames1} carry the bytes`);
  for (let n = 1; n <= 4; n++) {
    t.true((m.value('hsx_device_flash_erases', { device: `node${n}` }) ?? 0) > 0, `node${n} erased flash to stage the image`);
    const wear = m.value('hsx_device_flash_wear_ratio', { device: `node${n}` }) ?? -1;
    t.true(wear > 0 && wear < 0.01, `node${n} wear ratio ${wear}`);
  }
  t.is(m.families.get('hsx_jobs_total')?.type, 'counter');
  t.is(m.value('hsx_http_streams'), 1, 'the page holds one live stream');
  t.truthy(m.value('process_cpu_user_seconds_total') !== undefined, 'process metrics are there');

  // job 2: the same image to the same devices: they run it already
  await page.$eval('#f-nodes', (i) => ((i as HTMLInputElement).value = ''));
  await page.type('#f-nodes', '1-4');
  await page.click('#f-submit');
  await page.waitForFunction(() => document.querySelector('#jobs tr[data-job="j-2"]')?.getAttribute('data-state') === 'SKIPPED', { timeout: 60_000 });
  const chips2 = await page.$$eval('#jobs tr[data-job="j-2"] .chip', (cs) => cs.map((c) => `${(c as HTMLElement).dataset['target']}:${(c as HTMLElement).dataset['state']}`));
  t.deepEqual(chips2, ['1:SKIPPED', '2:SKIPPED', '3:SKIPPED', '4:SKIPPED']);
  await page.waitForFunction((want: string) => [...document.querySelectorAll('#devices tbody tr[data-key]')].every((x) => (x as HTMLElement).dataset['status'] === 'READY' && (x as HTMLElement).dataset['sha'] === want), {}, sha);
  await shot(page, 'live-page-second-job.png', t);
  m = await metrics(base);
  t.is(m.value('hsx_jobs_total', { state: 'SKIPPED' }), 1);
  t.is(m.value('hsx_jobs_total', { state: 'TIMED_OUT' }), 1);
  t.is(m.value('hsx_job_targets_total', { link: 'bus', state: 'SKIPPED' }), 4);
  t.is(m.value('hsx_job_targets_total', { link: 'bus', state: 'SUCCEEDED' }), 4);
  t.is(m.value('hsx_link_transfers_total', { link: 'bus' }), 2);
  t.true((m.value('hsx_link_bytes_sent_total', { link: 'bus' }) ?? 0) - bytes1 < bytes1 / 4, 'the second job sent (almost) no image bytes');
  t.deepEqual(scriptErrors.get(page), [], 'no script errors on the page');
});

test('a viewer sees everything, boot failures and alerts highlighted, and can change nothing', async (t) => {
  const r = await rig(t, 2, { brokenPreload: true });
  const { s, base } = await serve(t, r.config);
  const b = await browser(t);
  const page = await openPage(t, b, base, VIEWER);
  await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr[data-key]').length === 2);
  const shown = (sel: string) => page.$eval(sel, (e) => (globalThis as any).getComputedStyle(e).display !== 'none');
  t.false(await shown('#submit-form'), 'no submit form for a viewer');
  t.true(await shown('#viewer-note'), 'the page says why');
  t.regex(await page.$eval('#who', (e) => e.textContent ?? ''), /watcher \(viewer\)/);
  // the devices' failed boots and the boot alerts, from before the page was opened
  const alerts = await page.$$eval('#alerts li.error', (lis) => lis.map((li) => `${(li as HTMLElement).dataset['type']} ${li.textContent}`));
  for (const n of [1, 2]) {
    t.true(alerts.some((a) => a.startsWith('boot.failed') && a.includes(`node${n}`) && a.includes('EBADMSG')), `node${n}'s failed boot is listed: ${alerts.join(' | ')}`);
    t.true(alerts.some((a) => a.startsWith('boot.alert') && a.includes(`node${n}`)), `node${n}'s boot alert is listed`);
  }
  const bootCells = await page.$$eval('#devices tbody tr', (rows) => rows.map((r) => r.querySelectorAll('td')[7]?.textContent ?? ''));
  t.true(bootCells.every((c) => /^failed/.test(c)), `the rows show the failed boot: ${bootCells.join(' | ')}`);
  await shot(page, 'live-page-viewer-boot-alerts.png', t);
  // the page's own request with the viewer's token, as a hand-made form would send it
  const reply = await page.evaluate(async (token: string) => {
    const res = await fetch('/api/jobs', { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ link: 'bus', image: 'sensor.hxe' }) });
    return { status: res.status, body: (await res.json()) as { error: string } };
  }, VIEWER);
  t.is(reply.status, 403);
  t.is(reply.body.error, 'EPERM:operator_required');
  const cancel = await page.evaluate(async (token: string) => {
    const res = await fetch('/api/jobs/j-1/cancel', { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    return { status: res.status, body: await res.json() };
  }, VIEWER);
  t.is(cancel.status, 403);
  const state = await (await fetch(base + '/api/state', { headers: { authorization: `Bearer ${VIEWER}` } })).json() as { jobs: unknown[] };
  t.deepEqual(state.jobs, [], 'nothing was submitted');
  // and without a token, or with a wrong one, nothing is shown at all
  t.is((await fetch(base + '/api/state')).status, 401);
  t.is((await fetch(base + '/api/state', { headers: { authorization: 'Bearer not-a-token-of-ours' } })).status, 401);
  t.is((await fetch(base + '/metrics')).status, 401);
  // a viewer on the control port is counted by role
  const c = await ControlClient.connect(s.control, { token: VIEWER, timeoutMs: 10_000 });
  if (!c.ok) throw new Error(c.error.message);
  t.teardown(() => c.value.close());
  t.true((await c.value.request('ping', {})).ok);
  const m = await metrics(base);
  t.is(m.value('hsx_control_connections', { role: 'viewer' }), 1);
  t.is(m.value('hsx_control_connections', { role: 'operator' }), 0);
  t.deepEqual(scriptErrors.get(page), [], 'no script errors on the page');
});

/** A raw HTTP exchange (what fetch will not send: huge headers, a bad request line). */
function raw(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => s.end(text));
    let out = '';
    s.on('data', (d) => (out += d.toString()));
    s.on('error', reject);
    s.on('close', () => resolve(out));
  });
}

test('bad requests: unknown paths 404, wrong methods 405, malformed and oversize requests 4xx with a reason', async (t) => {
  const r = await rig(t, 1);
  const { base } = await serve(t, r.config);
  const auth = { authorization: `Bearer ${OPERATOR}` };
  const json = async (res: Response) => ({ status: res.status, body: await res.json() as { error: string; message?: string } });

  let x = await json(await fetch(base + '/nothing/here', { headers: auth }));
  t.is(x.status, 404);
  t.is(x.body.error, 'not_found');
  t.is((await fetch(base + '/api/../etc/passwd')).status, 404);
  x = await json(await fetch(base + '/api/state', { method: 'POST', headers: auth }));
  t.is(x.status, 405);
  x = await json(await fetch(base + '/api/state?part=jobs', { headers: auth }));
  t.deepEqual([x.status, x.body.error], [400, 'bad_part']);
  // the rows a scan changes, and nothing else: what the page fetches again after a scan or a boot
  const rows = await (await fetch(base + '/api/state?part=rows', { headers: auth })).json() as Record<string, unknown>;
  t.deepEqual(Object.keys(rows).sort(), ['devices', 'links', 'recent', 'seq']);
  const whole = await (await fetch(base + '/api/state', { headers: auth })).json() as Record<string, unknown>;
  t.deepEqual(rows['devices'], whole['devices']);
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'text/plain' }, body: 'link=bus' }));
  t.is(x.status, 415);
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{"link": "bus",' }));
  t.deepEqual([x.status, x.body.error], [400, 'bad_json']);
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '[1,2]' }));
  t.deepEqual([x.status, x.body.error], [400, 'bad_json']);
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ link: 'bus', image: 'x'.repeat(20_000) }) }));
  t.deepEqual([x.status, x.body.error], [413, 'body_too_large']);
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ link: 'bus', image: 'sensor.hxe', shell: 'rm -rf /' }) }));
  t.deepEqual([x.status, x.body.error], [400, 'unknown_field']);
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ link: 'nope', image: 'sensor.hxe' }) }));
  t.deepEqual([x.status, x.body.error], [404, 'ENOENT:no_such_link'], 'the job service refusal, as on the control port');
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ link: 'bus', image: '../../etc/passwd' }) }));
  t.deepEqual([x.status, x.body.error], [403, 'EPERM:path_outside_images_dir'], 'outside the images dir, as on the control port');
  let deep = '1';
  for (let i = 0; i < 200; i++) deep = `[${deep}]`;
  x = await json(await fetch(base + '/api/jobs', { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: `{"link":"bus","image":"sensor.hxe","options":${deep}}` }));
  t.deepEqual([x.status, x.body.error], [400, 'EINVAL:request_too_deep']);
  x = await json(await fetch(base + '/api/jobs/j-77/cancel', { method: 'POST', headers: auth }));
  t.deepEqual([x.status, x.body.error], [404, 'ESRCH:no_such_job']);
  x = await json(await fetch(base + '/api/jobs/j-1%3Brm/cancel', { method: 'POST', headers: auth }));
  t.deepEqual([x.status, x.body.error], [400, 'bad_job_id']);
  x = await json(await fetch(base + '/api/events?since=-1', { headers: auth }));
  t.deepEqual([x.status, x.body.error], [400, 'bad_since']);
  x = await json(await fetch(base + '/api/state', { headers: { authorization: 'Basic abc' } }));
  t.deepEqual([x.status, x.body.error], [401, 'bad_authorization']);
  x = await json(await fetch(base + '/' + 'a'.repeat(3000), { headers: auth }));
  t.deepEqual([x.status, x.body.error], [414, 'uri_too_long']);

  const port = Number(new URL(base).port);
  const big = await raw(port, `GET /api/state HTTP/1.1\r\nHost: x\r\nX-Big: ${'y'.repeat(20_000)}\r\n\r\n`);
  t.regex(big, /^HTTP\/1\.1 431 /);
  t.regex(big, /headers_too_large/);
  const garbage = await raw(port, 'HELLO THERE\r\n\r\n');
  t.regex(garbage, /^HTTP\/1\.1 400 /);
  t.regex(garbage, /bad_request/);
  // the gateway is fine after all that
  t.is((await fetch(base + '/api/state', { headers: auth })).status, 200);
  void request; // (node:http's client is not needed: fetch and raw sockets cover it)
});

test('an operator cancels a running job from the page', async (t) => {
  t.timeout(120_000);
  const r = await rig(t, 2, { bitrate: 125_000 });
  const { base } = await serve(t, r.config);
  const b = await browser(t);
  const page = await openPage(t, b, base, OPERATOR);
  await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr[data-key]').length === 2);
  await page.select('#f-image', 'big.hxe');
  await page.click('#f-submit');
  // once its bars move, the job's cancel button
  await page.waitForFunction(() => [...document.querySelectorAll('#devices .bar')].some((b) => Number((b as HTMLElement).dataset['pct']) > 0), { timeout: 60_000 });
  await page.click('#jobs button[data-cancel="j-1"]');
  await page.waitForFunction(() => document.querySelector('#jobs tr[data-job="j-1"]')?.getAttribute('data-state') === 'CANCELED', { timeout: 60_000 });
  const chips = await page.$$eval('#jobs tr[data-job="j-1"] .chip', (cs) => cs.map((c) => `${(c as HTMLElement).dataset['target']}:${(c as HTMLElement).dataset['state']}`));
  t.deepEqual(chips, ['1:CANCELED', '2:CANCELED']);
  t.is(await page.$('#jobs button[data-cancel="j-1"]'), null, 'no cancel button on an ended job');
  // the devices keep what they ran (nothing): the transfer was stopped before the switch
  await page.waitForFunction(() => [...document.querySelectorAll('#devices tbody tr[data-key]')].every((x) => (x as HTMLElement).dataset['sha'] === ''));
  const m = await metrics(base);
  t.is(m.value('hsx_jobs_total', { state: 'CANCELED' }), 1);
  t.deepEqual(scriptErrors.get(page), [], 'no script errors on the page');
});

test('without access tokens the page refuses any address but loopback', async (t) => {
  const { EventBus } = await import('../src/gateway/events/index.js');
  const { PageServer } = await import('../src/gateway/http/server.js');
  const { PageModel } = await import('../src/gateway/http/model.js');
  const { GatewayMetrics } = await import('../src/gateway/http/metrics.js');
  const { LinkStats } = await import('../src/gateway/link-stats.js');
  const { FakeClock } = await import('../src/engine/clock.js');
  const clock = new FakeClock();
  const bus = new EventBus({ clock });
  const model = new PageModel({ gatewayId: 'x', bus, jobs: () => null, links: () => [], inventory: () => undefined, deviceOf: () => undefined, localDevices: () => [], imagesDir: undefined, tokensConfigured: () => false, now: () => 0 });
  const metrics = new GatewayMetrics({ bus, jobs: null, links: new LinkStats(), devices: () => [], mqtt: () => null, controlConnections: () => ({}), pageStreams: () => 0 });
  t.teardown(() => {
    model.close();
    metrics.close();
    bus.close();
  });
  const make = (host: string, tokensConfigured: boolean) => new PageServer({
    host, port: 0, maxStreams: 1, maxBodyBytes: 1024, bus, model, metrics,
    control: { tokensConfigured, verifyToken: () => null, runAs: async () => ({ kind: 'error', error: 'ENOTSUP:test' }) },
  });
  const open = await make('0.0.0.0', false).listen();
  t.false(open.ok);
  if (!open.ok) {
    t.is(open.error.code, 'EINSECURE');
    t.regex(open.error.message, /no access tokens/);
  }
  const withTokens = make('0.0.0.0', true);
  const ok = await withTokens.listen();
  t.true(ok.ok, 'with tokens it may');
  await withTokens.close();
});
