/**
 * MQTT bridge throughput and latency into a real Mosquitto broker and back to a subscriber,
 * against a raw mqtt.js publish loop to the same broker in the same run. Two loads per path:
 *  - burst: 200 sessions × 50 progress + 1 complete, as fast as possible → delivered msgs/s;
 *  - paced: 200 sessions each at the bus's 10 Hz progress limit for 3 s → p99 latency.
 * Three paths: raw mqtt.js publishes (the baseline), the bridge fed directly, and the gateway's
 * real path (engine-style events → EventBus → bridge subscription → broker), which adds the bus's
 * progress coalescing (so the burst delivers fewer progress messages by design, and a progress
 * update may wait up to 1/progressHz for its slot: its latency is the coalescer's, the terminal
 * events' latency is the path's).
 * Prints JSON lines. Goal: bridge ≥ 70% of the raw rate, p99 < 50 ms, nothing terminal lost.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { systemClock } from '../src/engine/index.js';
import { EventBus } from '../src/gateway/events/index.js';
import { toBridgeEvent } from '../src/gateway/gateway.js';
import { MqttBridge } from '../src/gateway/mqtt/bridge.js';
import { startMosquitto } from '../test/support/mosquitto.js';

const SESSIONS = 200;
const BURST_PROGRESS = 50;
const PACED_HZ = 10;
const PACED_SECONDS = 3;

function p99(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] ?? NaN;
}

interface Sink {
  emit(session: number, type: 'provisioning.progress' | 'provisioning.complete', percent: number): void;
  close(): Promise<void>;
}

async function collector(url: string, topic: string) {
  const client = await mqtt.connectAsync(url, { protocolVersion: 5 });
  const st = { count: 0, terminal: 0, latencies: [] as number[], terminalLatencies: [] as number[], last: performance.now() };
  client.on('message', (_t, payload) => {
    const m = JSON.parse(payload.toString()) as { type: string; data: { sentAt: number } };
    const latency = performance.now() - m.data.sentAt;
    st.latencies.push(latency);
    st.count++;
    if (m.type === 'provisioning.complete') {
      st.terminal++;
      st.terminalLatencies.push(latency);
    }
    st.last = performance.now();
  });
  await client.subscribeAsync(topic, { qos: 1 });
  return {
    client,
    st,
    reset() {
      st.count = 0; st.terminal = 0; st.latencies = []; st.terminalLatencies = []; st.last = performance.now();
    },
    async settle(expected: number) {
      // Wait until every message and every terminal event arrived, or nothing has arrived for 2 s.
      while ((st.count < expected || st.terminal < SESSIONS) && performance.now() - st.last < 2000) await new Promise((r) => setTimeout(r, 50));
    },
  };
}

async function rawSink(url: string): Promise<Sink> {
  const pub: MqttClient = await mqtt.connectAsync(url, { protocolVersion: 5 });
  let seq = 0;
  return {
    emit(s, type, percent) {
      const qos = type === 'provisioning.complete' ? 1 : 0;
      pub.publish(`raw/gw/device/d${s % 16}/events/${type.replace('.', '/')}`, JSON.stringify({ seq: ++seq, ts: Date.now(), type, pid: s, phase: 'write', data: { percent, sentAt: performance.now() }, device: `d${s % 16}` }), { qos });
    },
    close: () => pub.endAsync(),
  };
}

async function bridgeSink(url: string): Promise<Sink> {
  const bridge = new MqttBridge({ url, topics: { prefix: 'bridge', gatewayId: 'gw' }, bufferLimit: 100_000 });
  await bridge.waitConnected();
  let seq = 0;
  return {
    emit(s, type, percent) {
      bridge.publishEvent({ seq: ++seq, ts: Date.now(), type, pid: s, phase: 'write', data: { percent, sentAt: performance.now() }, device: `d${s % 16}` });
    },
    close: async () => {
      await bridge.stop();
    },
  };
}

async function busSink(url: string): Promise<Sink> {
  const bridge = new MqttBridge({ url, topics: { prefix: 'bus', gatewayId: 'gw' }, bufferLimit: 100_000 });
  await bridge.waitConnected();
  const bus = new EventBus({ clock: systemClock, config: { queueDepth: 2048, queueDepthMax: 4096 } });
  const sub = bus.subscribe({ maxEvents: 4096, deliver: (ev) => (bridge.publishEvent(toBridgeEvent(ev)), true) });
  return {
    emit(s, type, percent) {
      // As the engine emits them: per-session progress with bytes, the device in data.
      bus.emit({ type, pid: s + 1, phase: type === 'provisioning.complete' ? 'end' : 'write', data: { percent, bytes_written: percent * 100, total_bytes: 10_000, sentAt: performance.now(), device: `d${s % 16}` } });
    },
    async close() {
      bus.unsubscribe(sub.token);
      bus.close();
      await bridge.stop();
    },
  };
}

async function run(label: string, prefix: string, make: (url: string) => Promise<Sink>, url: string) {
  const sub = await collector(url, `${prefix}/gw/device/+/events/#`);
  const sink = await make(url);
  // burst
  const total = SESSIONS * (BURST_PROGRESS + 1);
  const t0 = performance.now();
  for (let s = 0; s < SESSIONS; s++) {
    for (let i = 0; i < BURST_PROGRESS; i++) sink.emit(s, 'provisioning.progress', i * 2);
    sink.emit(s, 'provisioning.complete', 100);
  }
  await sub.settle(total);
  const rate = sub.st.count / ((sub.st.last - t0) / 1000);
  const burst = { bench: 'mqtt', path: label, load: 'burst', sessions: SESSIONS, sent: total, delivered: sub.st.count, terminal_sent: SESSIONS, terminal_delivered: sub.st.terminal, msgs_per_s: Math.round(rate) };
  // paced
  sub.reset();
  const ticks = PACED_HZ * PACED_SECONDS;
  let sent = 0;
  for (let k = 0; k < ticks; k++) {
    const tickStart = performance.now();
    for (let s = 0; s < SESSIONS; s++) {
      sink.emit(s, k === ticks - 1 ? 'provisioning.complete' : 'provisioning.progress', Math.round((100 * k) / ticks));
      sent++;
    }
    await new Promise((r) => setTimeout(r, Math.max(0, 1000 / PACED_HZ - (performance.now() - tickStart))));
  }
  await sub.settle(sent);
  const paced = { bench: 'mqtt', path: label, load: 'paced', offered_msgs_per_s: SESSIONS * PACED_HZ, sent, delivered: sub.st.count, terminal_sent: SESSIONS, terminal_delivered: sub.st.terminal, p99_ms: +p99(sub.st.latencies).toFixed(2), terminal_p99_ms: +p99(sub.st.terminalLatencies).toFixed(2) };
  await sink.close();
  await sub.client.endAsync();
  return { burst, paced, rate };
}

const broker = await startMosquitto();
try {
  await run('warmup', 'raw', rawSink, broker.url); // JIT and broker warm-up; not reported
  const raw = await run('raw_mqttjs', 'raw', rawSink, broker.url);
  console.log(JSON.stringify(raw.burst));
  console.log(JSON.stringify(raw.paced));
  const br = await run('bridge', 'bridge', bridgeSink, broker.url);
  console.log(JSON.stringify(br.burst));
  console.log(JSON.stringify(br.paced));
  const gw = await run('bus_and_bridge', 'bus', busSink, broker.url);
  console.log(JSON.stringify({ ...gw.burst, note: 'progress coalesced by the bus (10 Hz per session)' }));
  console.log(JSON.stringify(gw.paced));
  console.log(JSON.stringify({ bench: 'mqtt', summary: true, bridge_vs_raw_rate: +(br.rate / raw.rate).toFixed(3), bridge_p99_ms: br.paced.p99_ms, bus_and_bridge_p99_ms: gw.paced.p99_ms, bus_and_bridge_terminal_p99_ms: gw.paced.terminal_p99_ms, raw_p99_ms: raw.paced.p99_ms, terminal_lost: SESSIONS * 4 - br.burst.terminal_delivered - br.paced.terminal_delivered - gw.burst.terminal_delivered - gw.paced.terminal_delivered, goal: 'ratio >= 0.7, p99 < 50 ms, terminal_lost = 0' }));
} finally {
  await broker.stop();
}
