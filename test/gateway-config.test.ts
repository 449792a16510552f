import test from 'ava';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, validateConfig } from '../src/gateway/config.js';

test('configs/gateway.toml and configs/demo.toml load', (t) => {
  for (const f of ['configs/gateway.toml', 'configs/demo.toml']) {
    const r = loadConfig(f);
    if (!r.ok) t.fail(r.error.message);
    else t.true(r.value.gateway.id.length > 0, f);
  }
  const demo = loadConfig('configs/demo.toml');
  t.true(demo.ok && demo.value.mqtt?.embedded === true);
  t.true(demo.ok && demo.value.devices.length === 4);
});

test('unknown keys are errors naming the key path', (t) => {
  const r = validateConfig({ gateway: { id: 'g' }, mqtt: { embeded: true } });
  t.false(r.ok);
  if (!r.ok) {
    t.is(r.error.code, 'ECONFIG');
    t.true(r.error.problems.some((p) => p.startsWith('mqtt') && p.includes('"embeded"')), r.error.message);
  }
});

test('bad values name the key and what was expected', (t) => {
  const r = validateConfig({ gateway: { id: 'has space' }, control: { listen: 'nope' }, devices: [{ name: 'a', state_dir: 's', node_id: 500 }] });
  t.false(r.ok);
  if (r.ok) return;
  const text = r.error.problems.join('\n');
  t.regex(text, /gateway\.id = "has space": expected 1-64 characters/, 'the key path, the value and what is allowed');
  t.regex(text, /control\.listen = "nope": expected "HOST:PORT"/);
  t.regex(text, /devices\[0\]\.node_id/);
});

test('duplicate device names and dangling device references are refused', (t) => {
  const r = validateConfig({
    gateway: { id: 'g' },
    devices: [{ name: 'd', state_dir: 'x' }, { name: 'd', state_dir: 'y' }],
    links: { uart: [{ port: '/dev/null', role: 'listener', device: 'ghost' }] },
  });
  t.false(r.ok);
  if (r.ok) return;
  t.true(r.error.problems.some((p) => p.includes('devices[1].name: duplicate')));
  t.true(r.error.problems.some((p) => p.includes('links.uart[0].device: no device named "ghost"')));
});

test('embedded and url together are refused; TOML syntax errors are reported with the file', (t) => {
  t.false(validateConfig({ gateway: { id: 'g' }, mqtt: { embedded: true, url: 'mqtt://x:1' } }).ok);
  const dir = mkdtempSync(join(tmpdir(), 'hsx-cfg-'));
  const f = join(dir, 'bad.toml');
  writeFileSync(f, '[gateway\nid = 1\n');
  const r = loadConfig(f);
  t.false(r.ok);
  if (!r.ok) t.regex(r.error.message, /bad\.toml:1:\d+: TOML syntax error/, 'the file, line and column');
  writeFileSync(f, '[gateway]\nid = "g"\nbad key = 1\n');
  const r3 = loadConfig(f);
  t.false(r3.ok);
  if (!r3.ok) {
    t.regex(r3.error.message, /bad\.toml:3:5: TOML syntax error: .*illegal character in key/);
    t.regex(r3.error.message, /3: {2}bad key = 1\n {8}\^/, 'with the line and a caret under the column');
  }
  const missing = loadConfig(join(dir, 'none.toml'));
  t.false(missing.ok);
});

test('relative paths resolve against the config file directory', (t) => {
  const r = loadConfig('configs/gateway.toml');
  t.true(r.ok);
  if (!r.ok) return;
  t.true(r.value.devices[0]!.state_dir.endsWith('configs/state/dut1'));
  t.true(r.value.boot.sd_manifest!.endsWith('configs/sd/manifest.toml'));
  t.is(r.value.control.max_line_bytes, 1024 * 1024);
  t.is(r.value.boot.max_failed_boots, 3);
});

test('CAN node ids: the identifier range (1..63), and one device per node id on a bus', (t) => {
  const devices = (nodes: Array<[string, number, string?]>) => nodes.map(([name, node_id, can]) => ({ name, state_dir: `s/${name}`, node_id, ...(can ? { can } : {}) }));
  const links = { can: [{ interface: 'vcan0', backend: 'virtual', role: 'listener' }, { interface: 'vcan1', backend: 'virtual', role: 'listener' }] };
  const gateway = { id: 'g' };
  const over = validateConfig({ gateway, devices: devices([['a', 64]]) });
  t.false(over.ok);
  if (!over.ok) t.true(over.error.problems.includes('devices[0].node_id = 64: must be <= 63'), over.error.message);
  const missing = validateConfig({ gateway: {}, devices: [{ name: 'a' }] });
  if (!missing.ok) t.true(missing.error.problems.includes('devices[0].state_dir: required (a string)'), missing.error.message);
  else t.fail('a device without state_dir is refused');
  const twice = validateConfig({ gateway, links, devices: devices([['a', 7], ['b', 8], ['c', 7]]) });
  t.false(twice.ok);
  if (!twice.ok) t.deepEqual(twice.error.problems, ['devices[2].node_id: node 7 on CAN link "vcan0" is already devices[0] ("a"); each device on a bus needs its own node id']);
  // the same node id on two buses is two devices
  t.true(validateConfig({ gateway, links, devices: devices([['a', 7, 'vcan0'], ['b', 7, 'vcan1']]) }).ok);
});

test('boot sources that point nowhere are config errors naming the key and the path', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hsx-cfg-'));
  const f = join(dir, 'gw.toml');
  writeFileSync(f, '[gateway]\nid = "g"\n[boot]\npreload_dir = "images"\nsd_manifest = "sd/manifest.toml"\n');
  const r = loadConfig(f);
  t.false(r.ok);
  if (!r.ok) t.deepEqual(r.error.problems, [`boot.preload_dir = "${join(dir, 'images')}": no such directory`, `boot.sd_manifest = "${join(dir, 'sd/manifest.toml')}": no such file`]);
  mkdirSync(join(dir, 'images'));
  mkdirSync(join(dir, 'sd'));
  writeFileSync(join(dir, 'sd/manifest.toml'), '');
  t.true(loadConfig(f).ok, 'both present: accepted');
});
