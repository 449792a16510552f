/**
 * `/metrics` (src/gateway/http/metrics.ts) against its documentation and the text format: every
 * name in docs/metrics.md's table is registered with the documented type and labels, and nothing
 * registered is undocumented; the exposition parses; the link counters sum a CAN and a UART result
 * as the table says.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FakeClock } from '../src/engine/clock.js';
import { EventBus } from '../src/gateway/events/index.js';
import { GatewayMetrics, METRIC_NAMES } from '../src/gateway/http/metrics.js';
import { LinkStats } from '../src/gateway/link-stats.js';
import type { FlashResult } from '../src/link/flasher.js';
import { ROOT } from './support/cli-argv.js';
import { parsePromText } from './support/prom-text.js';

interface Row { name: string; type: string; labels: string[] }

function docTable(): Row[] {
  const text = readFileSync(join(ROOT, 'docs', 'metrics.md'), 'utf8');
  const rows: Row[] = [];
  for (const line of text.split('\n')) {
    const m = /^\| `(hsx_[a-z_]+)` \| (counter|gauge) \| ([^|]*)\|/.exec(line);
    if (m) rows.push({ name: m[1]!, type: m[2]!, labels: [...(m[3] ?? '').matchAll(/`([a-z_]+)`/g)].map((x) => x[1]!) });
  }
  return rows;
}

function metricsWith(links: LinkStats) {
  const bus = new EventBus({ clock: new FakeClock() });
  const m = new GatewayMetrics({
    bus, jobs: null, links,
    devices: () => [{ name: 'dut1', totalErases: 12, maxErases: 3, endurance: 100 }],
    mqtt: () => ({ buffered: 5, droppedProgress: 2, droppedTerminal: 1 }),
    controlConnections: () => ({ viewer: 2, admin: 1 }),
    pageStreams: () => 1,
  });
  return { bus, m };
}

test('docs/metrics.md lists every metric the gateway registers, with its type and labels', async (t) => {
  const rows = docTable();
  t.deepEqual(rows.map((r) => r.name).sort(), [...METRIC_NAMES].sort());
  const { bus, m } = metricsWith(new LinkStats());
  const parsed = parsePromText(await m.text());
  for (const r of rows) {
    t.is(parsed.families.get(r.name)?.type, r.type, `${r.name} is a ${r.type}`);
    t.truthy(parsed.families.get(r.name)?.help, `${r.name} has help text`);
    for (const s of parsed.all(r.name)) t.deepEqual(Object.keys(s.labels).sort(), [...r.labels].sort(), `${r.name} labels`);
  }
  const own = [...parsed.families.keys()].filter((n) => n.startsWith('hsx_'));
  t.deepEqual(own.sort(), [...METRIC_NAMES].sort(), 'nothing undocumented');
  t.truthy(parsed.families.get('process_cpu_user_seconds_total'), 'process metrics');
  m.close();
  bus.close();
});

test('the values come from their sources', async (t) => {
  const links = new LinkStats();
  links.declare('idle');
  const can: FlashResult = {
    verdicts: [{ target: '1', ok: true, outcome: 'installed', from: null, to: 'ab', confirmPending: false }, { target: '9', ok: false, code: 'ETIMEDOUT', where: 'announce', reason: 'no_join', message: 'silent' }],
    stats: { payloadBytes: 1000, repairedChunks: 3, sent: { announce: 2, sync: 1, data: 125, repair: 3, ctrl: 4 } },
    elapsedMs: 1,
  };
  const uart: FlashResult = {
    verdicts: [{ target: '1', ok: true, outcome: 'updated', from: 'aa', to: 'bb', confirmPending: true }],
    stats: { dataBytesSent: 500, dataFramesSent: 10, retransmits: 2, timeouts: 1, restarts: 1 },
    elapsedMs: 1,
  };
  links.add('can0', 'can', can);
  links.add('can0', 'can', can);
  links.add('ttyA', 'uart', uart);
  const { bus, m } = metricsWith(links);
  const p = parsePromText(await m.text());
  t.is(p.value('hsx_link_transfers_total', { link: 'can0' }), 2);
  t.is(p.value('hsx_link_bytes_sent_total', { link: 'can0' }), 2000);
  t.is(p.value('hsx_link_frames_sent_total', { link: 'can0' }), 270);
  t.is(p.value('hsx_link_repairs_total', { link: 'can0' }), 6);
  t.is(p.value('hsx_link_retransmits_total', { link: 'can0' }), 6);
  t.is(p.value('hsx_link_timeouts_total', { link: 'can0' }), 2);
  t.is(p.value('hsx_link_bytes_sent_total', { link: 'ttyA' }), 500);
  t.is(p.value('hsx_link_retransmits_total', { link: 'ttyA' }), 2);
  t.is(p.value('hsx_link_timeouts_total', { link: 'ttyA' }), 1);
  t.is(p.value('hsx_link_repairs_total', { link: 'ttyA' }), 1);
  t.is(p.value('hsx_link_transfers_total', { link: 'idle' }), 0, 'a link is listed before its first transfer');
  t.is(p.value('hsx_device_flash_erases', { device: 'dut1' }), 12);
  t.is(p.value('hsx_device_flash_wear_ratio', { device: 'dut1' }), 0.03);
  t.is(p.value('hsx_mqtt_outage_buffer_messages'), 5);
  t.is(p.value('hsx_mqtt_outage_dropped_total', { kind: 'terminal' }), 1);
  t.is(p.value('hsx_control_connections', { role: 'viewer' }), 2);
  t.is(p.value('hsx_control_connections', { role: 'none' }), 0);
  t.is(p.value('hsx_http_streams'), 1);
  // scraped twice, a total read from elsewhere is not added twice
  const again = parsePromText(await m.text());
  t.is(again.value('hsx_link_bytes_sent_total', { link: 'can0' }), 2000);
  m.close();
  bus.close();
});

test('the test parser reads the format, escapes included, and refuses what is not it', (t) => {
  const p = parsePromText('# HELP a_total x\n# TYPE a_total counter\na_total{l="q\\"uo\\\\te\\n",m="2"} 3 1700000000\nb +Inf\n');
  t.deepEqual(p.all('a_total')[0]?.labels, { l: 'q"uo\\te\n', m: '2' });
  t.is(p.value('a_total'), 3);
  t.is(p.value('b'), Infinity);
  t.throws(() => parsePromText('a_total{l=unquoted} 1'));
  t.throws(() => parsePromText('a_total one'));
  t.throws(() => parsePromText('# TYPE a wibble'));
});
