/**
 * The pure parts of fleet rollouts (src/fleet/rollout.ts, src/fleet/images.ts): the selector, waves,
 * thresholds, the document's checks, and images split into parts and put together again.
 */
import test from 'ava';
import { assembleImage, imageMessages, sha256Hex } from '../src/fleet/images.js';
import {
  FleetError,
  checkRolloutDoc,
  emptyCounts,
  failureRate,
  matches,
  parseDuration,
  parseRate,
  parseSelector,
  parseWaves,
  recount,
  waveSizes,
  type FleetDevice,
  type RolloutDoc,
} from '../src/fleet/rollout.js';

const dev = (gateway: string, app: string | null): FleetDevice => ({ gateway, device: 'd', link: 'bus', target: '1', app_name: app, version: null, sha256: null, scanned_ts: null, gateway_state: 'online' });

const refused = (fn: () => unknown, reason: string): string => {
  try {
    fn();
  } catch (e) {
    if (e instanceof FleetError && e.reason === reason) return e.message;
    throw e;
  }
  throw new Error(`not refused (${reason})`);
};

test('selector: every term must match, * and ? glob, unknown keys refused', (t) => {
  const s = parseSelector('app=sensor_app,gateway=hall-b-*');
  t.true(matches(s, dev('hall-b-12', 'sensor_app')));
  t.false(matches(s, dev('hall-a-1', 'sensor_app')));
  t.false(matches(s, dev('hall-b-1', null)));
  t.true(matches(parseSelector('gateway=hall-?-1'), dev('hall-x-1', null)));
  t.false(matches(parseSelector('gateway=hall.b'), dev('hallxb', null)), 'a dot is a dot');
  t.regex(refused(() => parseSelector('colour=red'), 'bad_selector'), /not one of app, gateway/);
  refused(() => parseSelector(''), 'bad_selector');
  refused(() => parseSelector('app'), 'bad_selector');
  refused(() => parseSelector('app='), 'bad_selector');
});

test('waves: cumulative counts and percentages, rounded up, empty waves dropped, must end at 100%', (t) => {
  t.deepEqual(waveSizes(parseWaves('1,10%,100%'), 16), [{ spec: '1', size: 1 }, { spec: '10%', size: 1 }, { spec: '100%', size: 14 }]);
  t.deepEqual(waveSizes(parseWaves('1,10%,100%'), 500), [{ spec: '1', size: 1 }, { spec: '10%', size: 49 }, { spec: '100%', size: 450 }]);
  t.deepEqual(waveSizes(parseWaves('5,100%'), 3), [{ spec: '5', size: 3 }]);
  t.deepEqual(waveSizes(parseWaves('100%'), 0), []);
  refused(() => parseWaves('1,10%'), 'bad_waves');
  refused(() => parseWaves('0,100%'), 'bad_waves');
  refused(() => parseWaves('1,101%'), 'bad_waves');
  refused(() => parseWaves('1,,100%'), 'bad_waves');
  refused(() => parseWaves('ten,100%'), 'bad_waves');
});

test('thresholds and timeouts: in range or refused', (t) => {
  t.is(parseRate('5%'), 0.05);
  t.is(parseRate('0.25'), 0.25);
  t.is(parseRate('0%'), 0);
  t.is(parseRate('100%'), 1);
  for (const bad of ['150%', '-1', '1.5', 'x', '']) refused(() => parseRate(bad), 'bad_threshold');
  t.is(parseDuration('10m'), 600);
  t.is(parseDuration('90'), 90);
  t.is(parseDuration('1h'), 3600);
  for (const bad of ['0s', '500ms', '8d', '30d', 'soon']) refused(() => parseDuration(bad), 'bad_timeout');
});

function doc(): RolloutDoc {
  const target = (gateway: string, state: 'PENDING' | 'SUCCEEDED' | 'FAILED') => ({ gateway, device: `${gateway}-1`, link: 'bus', target: '1', state, job_id: null, error: null });
  const d: RolloutDoc = {
    v: 1, id: 'r-1', version: 3, state: 'running', reason: null, controller: 'c', created_ts: 1, updated_ts: 2,
    image: { sha256: 'a'.repeat(64), size: 10, name: 'x.hxe', parts: 0 },
    selector: 'app=x', waves_spec: ['1', '100%'], abort_failure_rate: 0.05, timeout_s: 60, current_wave: 1,
    skipped: [],
    waves: [
      { index: 0, spec: '1', state: 'done', started_ts: 1, finished_ts: 2, targets: [target('g1', 'SUCCEEDED')], counts: emptyCounts() },
      { index: 1, spec: '100%', state: 'running', started_ts: 2, finished_ts: null, targets: [target('g2', 'FAILED'), target('g3', 'PENDING')], counts: emptyCounts() },
    ],
    totals: { ...emptyCounts(), devices: 0 },
  };
  recount(d);
  return d;
}

test('the rollout document: a good one passes; each hand edit into an invalid state is refused naming the field', (t) => {
  t.notThrows(() => checkRolloutDoc(doc(), 'r-1'));
  t.is(failureRate(doc()), 0.5);
  const edits: Array<[string, (d: any) => void, RegExp]> = [
    ['wrong id', (d) => (d.id = 'r-2'), /id is "r-2" on the topic of r-1/],
    ['state', (d) => (d.state = 'done'), /state must be one of/],
    ['current wave out of range', (d) => (d.current_wave = 2), /current_wave must be null or 0\.\.1/],
    ['running without a wave', (d) => (d.current_wave = null), /must name a wave/],
    ['earlier wave not done', (d) => (d.waves[0].state = 'running'), /waves\[0\]\.state must be done/],
    ['completed with a wave running', (d) => ((d.state = 'completed'), (d.current_wave = null)), /completed but a wave is not done/],
    ['a device twice', (d) => d.waves[1].targets.push({ ...d.waves[0].targets[0] }), /twice/],
    ['a target state', (d) => (d.waves[1].targets[0].state = 'DONE'), /targets\[0\]\.state must be one of/],
    ['threshold', (d) => (d.abort_failure_rate = 5), /abort_failure_rate must be a number 0\.\.1/],
    ['timeout', (d) => (d.timeout_s = 0), /timeout_s must be ≥ 1/],
    ['image hash', (d) => (d.image.sha256 = 'xyz'), /image\.sha256/],
    ['version', (d) => (d.version = 0), /version must be an integer ≥ 1/],
  ];
  for (const [what, edit, re] of edits) {
    const d = doc();
    edit(d);
    t.regex(refused(() => checkRolloutDoc(d, 'r-1'), 'bad_rollout_doc'), re, what);
  }
  refused(() => checkRolloutDoc('nope'), 'bad_rollout_doc');
});

test('images: whole when small, else parts and a manifest; put together and verified; a mismatch is refused', (t) => {
  const bytes = new Uint8Array(1000).map((_, i) => i % 251);
  const sha = sha256Hex(bytes);
  const small = imageMessages('hsx', bytes, 4096);
  t.is(small.parts, 0);
  t.deepEqual(small.messages.map(([topic]) => topic), [`hsx/fleet/images/${sha}`]);
  const split = imageMessages('hsx', bytes, 300);
  t.is(split.parts, 4);
  t.deepEqual(split.messages.map(([topic]) => topic), [0, 1, 2, 3].map((n) => `hsx/fleet/images/${sha}/${n}`).concat(`hsx/fleet/images/${sha}`));
  t.deepEqual(JSON.parse(split.messages[4]![1].toString()), { hsx_fleet_image: 1, sha256: sha, size: 1000, parts: 4, part_bytes: 300 });
  for (const m of [small, split]) t.deepEqual(assembleImage('hsx', sha, new Map(m.messages), 1 << 20), bytes);
  const tampered = new Map(split.messages);
  const p1 = Buffer.from(tampered.get(`hsx/fleet/images/${sha}/1`)!);
  p1[0] = p1[0]! ^ 1;
  tampered.set(`hsx/fleet/images/${sha}/1`, p1);
  refused(() => assembleImage('hsx', sha, tampered, 1 << 20), 'image_hash_mismatch');
  const missing = new Map(split.messages);
  missing.delete(`hsx/fleet/images/${sha}/2`);
  refused(() => assembleImage('hsx', sha, missing, 1 << 20), 'image_part_missing');
  refused(() => assembleImage('hsx', 'b'.repeat(64), new Map([[`hsx/fleet/images/${'b'.repeat(64)}`, Buffer.from(bytes)]]), 1 << 20), 'image_hash_mismatch');
  refused(() => assembleImage('hsx', sha, new Map(), 1 << 20), 'no_such_image');
  refused(() => assembleImage('hsx', sha, new Map(split.messages), 500), 'image_too_large');
  refused(() => imageMessages('hsx', bytes, 2 << 20), 'bad_part_bytes');
});
