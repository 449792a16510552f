/**
 * A job on the gateway's own CAN master link, on whatever bus the CAN suite runs on (the virtual
 * bus here; SocketCAN vcan0 in the HIL lane, hil/README.md): a `serve` process masters the bus, two
 * `device` processes listen on it. The job installs on both; the same job again finds both current
 * (SKIPPED); the inventory the daemon scanned shows what each runs. No MQTT: the lane has no broker.
 */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlClient } from '../src/gateway/control/client.js';
import type { JobRecord } from '../src/gateway/jobs/types.js';
import { CAN_SERIAL, openTestBus, spawnCli, type CliChild } from './support/can-bus.js';
import { ROOT } from './support/cli-argv.js';
import { startServe } from './support/serve-child.js';
import { sha256Hex } from './update-images.js';
import { existsSync, readFileSync } from 'node:fs';

const canTest = CAN_SERIAL ? test.serial : test;
const APPS = join(ROOT, 'configs', 'sd', 'apps');

canTest('a job on the daemon\'s CAN master link installs on two device processes; the same job again is SKIPPED; the inventory shows the image', async (t) => {
  const bus = await openTestBus();
  const dir = mkdtempSync(join(tmpdir(), 'can-jobs-'));
  const devices: CliChild[] = [];
  t.teardown(async () => {
    for (const d of devices) d.child.kill('SIGTERM');
    await Promise.all(devices.map((d) => d.exited));
    await bus.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const address = bus.processAddress();
  for (const node of [1, 2]) devices.push(spawnCli(['device', '--can', address, '--node', String(node), '--state', join(dir, `node${node}`), '--json']));
  await Promise.all(devices.map((d) => d.waitFor((l) => l['type'] === 'ready')));
  const link = bus.kind === 'socketcan'
    ? `[[links.can]]\nname = "bench"\ninterface = "${address}"\nbackend = "socketcan"\nrole = "master"\n`
    : `[[links.can]]\nname = "bench"\ninterface = "${address.replace(/^virtual:/, '')}"\nbackend = "virtual"\ntiming = false\nrole = "master"\n`;
  const config = join(dir, 'gateway.toml');
  writeFileSync(config, `[gateway]\nid = "can-jobs"\nlog_level = "warn"\nstate_dir = "${join(dir, 'gateway')}"\n\n[control]\nimages_dir = "${APPS}"\n\n${link}`);
  const s = await startServe(config);
  t.teardown(async () => {
    if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
    await s.exited;
  });
  const v1 = sha256Hex(new Uint8Array(readFileSync(join(APPS, 'sensor.hxe'))));

  for (const [round, want] of [[1, 'SUCCEEDED/installed'], [2, 'SKIPPED/current']] as const) {
    const p = spawnCli(['job', 'submit', '--connect', s.control, '--json', '--link', 'bench', '--nodes', '1-2', '--image-name', 'sensor.hxe', '--timeout-ms', '400']);
    const code = await p.exited;
    const job = p.lines.find((l) => l['type'] === 'result') as unknown as JobRecord | undefined;
    t.truthy(job, `round ${round}: ${JSON.stringify(p.lines.slice(-3))} ${p.stderr()}`);
    t.is(code, 0, `round ${round}: ${JSON.stringify(job)}`);
    t.deepEqual(job!.targets.map((x) => `${x.target}:${x.state}/${x.outcome}`), [`1:${want}`, `2:${want}`], `round ${round}`);
    // How the image went (issue 25): fresh nodes decode deflate, so the compressed image; then CURRENT.
    for (const x of job!.targets) {
      const tr = x.transfer;
      t.is(tr?.mode, round === 1 ? 'compressed' : 'current', `round ${round}: target ${x.target}: ${JSON.stringify(tr)}`);
      if (round === 1) t.true(tr!.bytes_on_wire > 0 && tr!.bytes_on_wire < tr!.image_bytes && tr!.ratio === Math.round((tr!.bytes_on_wire / tr!.image_bytes) * 10000) / 10000);
      else t.is(tr?.bytes_on_wire, 0);
    }
  }
  // The gateway keeps what it flashed by SHA-256 in its state dir: the base of the next delta.
  t.true(existsSync(join(dir, 'gateway', 'images-by-sha', `${v1}.hxe`)));
  // Scanned again after the job: both nodes run the image. (Connected only now: a connection that
  // says nothing for [control] pre_auth_timeout_ms is closed, and the VM lane is slow.)
  const conn = await ControlClient.connect(s.control, { timeoutMs: 60_000 });
  if (!conn.ok) return t.fail(conn.error.message);
  const c = conn.value;
  t.teardown(() => c.close());
  const inv = await c.request('inventory', { link: 'bench', refresh: true });
  t.true(inv.ok, JSON.stringify(inv));
  const entries = (inv as { ok: true; value: { links: Array<{ entries: Array<{ target: string; sha256: string | null }> }> } }).value.links[0]!.entries;
  t.deepEqual(entries.map((e) => [e.target, e.sha256]), [['1', v1], ['2', v1]]);
});
