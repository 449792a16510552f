/**
 * The live page's event stream (src/gateway/http/sse.ts) under a browser that stops reading: the
 * stream is an event-bus subscription, so the bus's slow-consumer rules cut it off, and the
 * gateway holds at most Node's socket buffer plus the subscription's bounded queue for it meanwhile.
 * In-process, with a fake clock for the bus (its grace period and warning intervals), a real HTTP
 * server and a real TCP client that reads the response headers and then nothing more.
 */
import test from 'ava';
import { connect, type Socket } from 'node:net';
import { FakeClock } from '../src/engine/clock.js';
import { EventBus } from '../src/gateway/events/index.js';
import { GatewayMetrics } from '../src/gateway/http/metrics.js';
import { PageModel } from '../src/gateway/http/model.js';
import { PageServer } from '../src/gateway/http/server.js';
import { LinkStats } from '../src/gateway/link-stats.js';

async function setup(t: import('ava').ExecutionContext) {
  const clock = new FakeClock(1_000_000);
  const bus = new EventBus({ clock });
  const model = new PageModel({
    gatewayId: 'sse-test', bus, jobs: () => null, links: () => [], inventory: () => undefined, deviceOf: () => undefined,
    localDevices: () => [], imagesDir: undefined, tokensConfigured: () => false, now: () => clock.now(),
  });
  let server: PageServer | null = null;
  const metrics = new GatewayMetrics({
    bus, jobs: null, links: new LinkStats(), devices: () => [], mqtt: () => null, controlConnections: () => ({}), pageStreams: () => server?.streamCount ?? 0,
  });
  server = new PageServer({
    host: '127.0.0.1', port: 0, maxStreams: 4, maxBodyBytes: 16 * 1024, bus, model, metrics,
    control: { tokensConfigured: false, verifyToken: () => ({ name: 'local', role: 'admin' }), runAs: async () => ({ kind: 'error', error: 'ENOTSUP:test' }) },
  });
  const listening = await server.listen();
  if (!listening.ok) throw new Error(listening.error.message);
  t.teardown(async () => {
    await server!.close();
    model.close();
    metrics.close();
    bus.close();
  });
  return { clock, bus, server, port: listening.value.port };
}

/** Reads an event stream one event (a `\n\n`-terminated part) at a time until `onEvent` says done or the stream ends. */
async function readEvents(reader: ReadableStreamDefaultReader<Uint8Array>, onEvent: (part: string) => boolean): Promise<void> {
  const dec = new TextDecoder();
  let text = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    text += dec.decode(value, { stream: true });
    const parts = text.split('\n\n');
    text = parts.pop() ?? '';
    for (const p of parts) if (onEvent(p)) return;
  }
}

/** Opens /api/events and resolves once the response headers are in; then reads nothing more. */
function stalledStream(port: number): Promise<{ socket: Socket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write('GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n'));
    let head = '';
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    socket.on('error', () => undefined);
    const onData = (d: Buffer): void => {
      head += d.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        socket.off('data', onData);
        socket.pause(); // the browser's tab is frozen: nothing is read from here on
        resolve({ socket, closed });
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
  });
}

test('a page that stops reading its event stream is cut off by the bus rules, and what the gateway holds for it stays bounded', async (t) => {
  const { clock, bus, server, port } = await setup(t);
  const baseSubs = bus.stats().subscribers;
  const { socket, closed } = await stalledStream(port);
  t.is(server.streamCount, 1);
  t.is(bus.stats().subscribers, baseSubs + 1);
  clock.advance(2_000); // past the subscription's grace period: back-pressure verdicts apply

  // droppable events (scans here; progress is held for the page's progress tick), 4 KiB each, far more
  // than the socket buffers hold
  const pad = 'x'.repeat(4096);
  let maxBuffered = 0;
  let maxPending = 0;
  let sent = 0;
  for (; sent < 50_000 && server.streamCount > 0; sent++) {
    bus.publish({ type: 'inventory.scanned', pid: null, phase: null, data: { link: 'bus', targets: [String(sent % 16)], error: null, pad } });
    if (sent % 16 === 0) {
      clock.advance(100);
      await new Promise<void>((r) => setImmediate(r)); // the socket writes what the kernel takes, as it would between events
    }
    for (const s of server.streamsInfo()) {
      maxBuffered = Math.max(maxBuffered, s.buffered);
      maxPending = Math.max(maxPending, s.pending);
    }
  }
  t.log(`cut off after ${sent} events; at most ${maxBuffered} bytes in Node's buffer and ${maxPending} events pending for it`);
  t.is(server.streamCount, 0, 'the stream was dropped');
  t.is(bus.stats().subscribers, baseSubs, 'its subscription is gone');
  t.true(bus.stats().slowDrops >= 1, 'as a slow consumer');
  t.true(bus.stats().dropped > 0, 'progress was dropped for it before the cut-off');
  t.true(sent < 50_000, 'long before the end of the flood');
  // bounded: one batch (at most 64 KiB and one event) past the 16 KiB high-water mark in Node's buffer,
  // the bus's hard limit in its queue
  t.true(maxBuffered < 16 * 1024 + 64 * 1024 + 8 * 1024, `Node held ${maxBuffered} bytes for the stalled page`);
  t.true(maxPending <= 1024 + 1, `the queue held ${maxPending} events`);
  socket.resume(); // the tab wakes up: it reads what the kernel held, then finds the connection closed
  await closed;
  t.pass('the connection was closed by the gateway');
  // the metrics say so too
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  t.regex(text, /^hsx_event_bus_slow_consumers_dropped_total [1-9]/m);
  t.regex(text, /^hsx_http_streams 0$/m);
});

test('a page that reads keeps its stream through the same flood', async (t) => {
  const { clock, bus, server, port } = await setup(t);
  const res = await fetch(`http://127.0.0.1:${port}/api/events`);
  t.is(res.status, 200);
  t.regex(res.headers.get('content-type') ?? '', /^text\/event-stream/);
  const reader = res.body!.getReader();
  clock.advance(2_000);
  let got = 0;
  let progressSeen = 0;
  const reading = readEvents(reader, (p) => {
    if (p.includes('"job.progress"')) progressSeen++;
    if (p.includes('"job.finished"')) got++;
    return got === 1;
  });
  for (let i = 0; i < 2_000; i++) {
    bus.publish({ type: 'job.progress', pid: null, phase: null, data: { job_id: 'j-1', target: '1', acked_bytes: i, total_bytes: 2000 } });
    if (i % 50 === 0) await new Promise<void>((r) => setImmediate(r)); // let the socket drain, as a live browser would
  }
  bus.publish({ type: 'job.finished', pid: null, phase: null, data: { job_id: 'j-1', state: 'SUCCEEDED' } });
  await reading;
  t.is(got, 1, 'the terminal event arrived');
  t.true(progressSeen >= 1 && progressSeen < 2_000, `progress is coalesced for the page (${progressSeen} of 2,000 arrived)`);
  t.is(server.streamCount, 1, 'the stream is still open');
  await reader.cancel();
});

test('streams are capped by [http] max_streams', async (t) => {
  const { server, port } = await setup(t);
  const open = await Promise.all([1, 2, 3, 4].map(() => stalledStream(port)));
  t.is(server.streamCount, 4);
  const res = await fetch(`http://127.0.0.1:${port}/api/events`);
  t.is(res.status, 503);
  t.is(((await res.json()) as { error: string }).error, 'too_many_streams');
  for (const o of open) o.socket.destroy();
  await Promise.all(open.map((o) => o.closed));
});

test("a job's record-carrying events in one turn of the event loop reach the page as the newest one, in bus order with what follows", async (t) => {
  const { clock, bus, port } = await setup(t);
  const res = await fetch(`http://127.0.0.1:${port}/api/events`);
  const reader = res.body!.getReader();
  clock.advance(2_000);
  const events: Array<{ seq: number; type: string; target?: string }> = [];
  const reading = readEvents(reader, (p) => {
    const line = p.split('\n').find((l) => l.startsWith('data: '));
    if (!line) return false;
    const ev = JSON.parse(line.slice(6)) as { seq: number; type: string; data: { target?: { target: string } } };
    events.push({ seq: ev.seq, type: ev.type, ...(ev.data.target ? { target: ev.data.target.target } : {}) });
    return ev.type === 'job.finished';
  });
  const record = (n: number) => ({ id: 'j-1', state: 'RUNNING', revision: n, targets: [] });
  // 16 targets change together (one turn), then a scan, then the job ends in a later turn
  for (let i = 1; i <= 16; i++) bus.publish({ type: 'job.target', pid: null, phase: null, data: { job_id: 'j-1', state: 'RUNNING', target: { target: String(i) }, job: record(i) } });
  const last = bus.lastSeq;
  bus.publish({ type: 'inventory.scanned', pid: null, phase: null, data: { link: 'bus', targets: [] } });
  await new Promise<void>((r) => setImmediate(r));
  await new Promise<void>((r) => setTimeout(r, 20));
  bus.publish({ type: 'job.finished', pid: null, phase: null, data: { job_id: 'j-1', state: 'SUCCEEDED', job: record(17) } });
  await reading;
  t.deepEqual(events.map((e) => e.type), ['job.target', 'inventory.scanned', 'job.finished']);
  t.is(events[0]!.seq, last, 'the newest of the 16 job.target events is the one delivered');
  t.is(events[0]!.target, '16');
  t.true(events[1]!.seq > events[0]!.seq && events[2]!.seq > events[1]!.seq, 'bus order is kept');
  await reader.cancel();
});
