/**
 * Bad input, the signature policy: a rollout of an unsigned image to gateways whose `[policy] require_signature`
 * refuses it. A real Mosquitto, one `serve` process with two simulated devices of its own (they run its engine
 * and policy) on a virtual CAN bus, the `fleet` CLI as a child. The jobs FAIL with the engine's EPERM reason named
 * in the rollout document, the threshold pauses the rollout before its second wave, and no device changed: each
 * still runs what it ran before (read from the retained inventory after the gateway's rescan).
 */
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { sha256Hex as tokenHash } from '../src/gateway/control/auth.js';
import { generateKeyFiles } from '../src/gateway/keys.js';
import type { RolloutDoc } from '../src/fleet/rollout.js';
import { ROOT } from './support/cli-argv.js';
import { spawnCli } from './support/can-bus.js';
import { mosquittoAvailable, startMosquitto } from './support/mosquitto.js';
import { startServe } from './support/serve-child.js';

const OPERATOR = 'fleet-policy-operator-1';
const V1_FILE = join(ROOT, 'configs', 'sd', 'apps', 'sensor.hxe');

test('an image the gateways\' signature policy refuses: FAILED with EPERM in the document, the rollout paused, no device changed', async (t) => {
  if (!mosquittoAvailable()) return t.pass('mosquitto not installed');
  t.timeout(300_000);
  const broker = await startMosquitto();
  t.teardown(() => broker.stop());
  const dir = mkdtempSync(join(tmpdir(), 'fleet-policy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  generateKeyFiles(dir, 'release');
  const config = join(dir, 'signed-1.toml');
  writeFileSync(config, [
    `[gateway]\nid = "signed-1"\nlog_level = "warn"\nstate_dir = "${join(dir, 'state')}"\n`,
    `[control]\nlisten = "127.0.0.1:9998"\n`,
    `[[control.tokens]]\nname = "ops"\nrole = "operator"\nsha256 = "${tokenHash(OPERATOR)}"\n`,
    `[policy]\nrequire_signature = true\nkeys_dir = "${dir}"\n`,
    `[mqtt]\nurl = "${broker.url}"\nprotocol_version = 4\ntopic_prefix = "pol"\ncommands = true\n`,
    `[[links.can]]\nname = "bus"\ninterface = "fleet-policy-bus"\nbackend = "virtual"\nrole = "master"\ntiming = false\n`,
    `[[devices]]\nname = "node1"\nstate_dir = "${join(dir, 'node1')}"\nnode_id = 1\n`,
    `[[devices]]\nname = "node2"\nstate_dir = "${join(dir, 'node2')}"\nnode_id = 2\n`,
  ].join('\n'));
  const gw = await startServe(config);
  t.teardown(async () => {
    gw.child.kill('SIGTERM');
    await gw.exited;
  });
  // The inventory before: what each device runs (nothing yet).
  const w = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0 });
  t.teardown(() => w.endAsync(true));
  const inventory = new Map<string, { sha256: string | null; scanned_ts: number }>();
  let changed: () => void = () => {};
  w.on('message', (topic, p) => {
    if (!p.length) return;
    inventory.set(topic, JSON.parse(p.toString()) as { sha256: string | null; scanned_ts: number });
    changed();
  });
  const until = (pred: () => boolean, what: string): Promise<void> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), 120_000);
      changed = () => {
        if (!pred()) return;
        clearTimeout(timer);
        resolve();
      };
      changed();
    });
  await w.subscribeAsync('pol/signed-1/device/+/inventory', { qos: 1 });
  await until(() => inventory.size === 2, 'both inventories');
  const before = new Map([...inventory].map(([k, v]) => [k, v]));

  const p = spawnCli(['fleet', 'rollout', 'create', '--broker', broker.url, '--prefix', 'pol', '--json', '--token', OPERATOR, '--image', V1_FILE, '--select', 'gateway=signed-1', '--waves', '1,100%', '--id', 'r-unsigned']);
  t.is(await p.exited, 1, p.stderr());
  const d = p.lines.find((l) => l['type'] === 'result')!['rollout'] as RolloutDoc;
  t.is(d.state, 'paused');
  t.regex(d.reason!, /failure rate 100% after wave 0 is over the threshold 5%/);
  t.is(d.waves[0]!.targets.length, 1);
  const target = d.waves[0]!.targets[0]!;
  t.is(target.state, 'FAILED');
  t.regex(target.error!, /^EPERM:/, 'the engine\'s policy refusal, named');
  t.true(d.waves[1]!.targets.every((x) => x.state === 'PENDING'), 'the second wave never ran');
  // After the job the gateway rescans: each device still runs what it ran before.
  await until(() => [...inventory].every(([k, v]) => v.scanned_ts > before.get(k)!.scanned_ts), 'a rescan after the job');
  for (const [k, v] of inventory) t.is(v.sha256, before.get(k)!.sha256, k);
  t.is(readFileSync(V1_FILE).length > 0, true);
});
