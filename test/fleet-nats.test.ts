/**
 * The fleet on a real three-node broker cluster: Debian's nats-server 2.9 with JetStream and an MQTT listener per
 * node (test/support/nats-cluster.ts). Four `serve` processes (MQTT 3.1.1: NATS speaks nothing else), each with its
 * own virtual CAN bus and four `device` processes, spread over the three nodes (each gateway's `mqtt.urls` starts
 * at its own node), the `fleet` CLI on a connection of its own. A 2-wave rollout completes. The failover half (a node SIGKILLed in
 * wave 2) is its own lane: test/lanes/fleet-nats-failover.ts, `make test-fleet-failover` (docs/fleet.md).
 * Every wait is on a line, a process exit or an MQTT message.
 */
import test from 'ava';
import { GATEWAYS, OPERATOR, V1, V1_FILE, V2, V2_FILE, cli, docOf, ensureFleet, fleet, from, inventoryShows, jobTokens, result, stopFleet } from './support/nats-fleet.js';

test.after.always(stopFleet);

test.serial('NATS cluster: 4 gateways × 4 devices over three nodes; v1 everywhere, then a 2-wave rollout of v2 completes', async (t) => {
  if (!(await ensureFleet(t))) return t.pass('nats-server not installed');
  const urls = fleet!.nats.urls;
  const ls = await cli(['ls'], from(urls, 2));
  t.is(ls.code, 0, ls.stderr);
  t.is(result(ls.lines)['gateways'], 4);
  t.is(result(ls.lines)['devices'], 16);
  const first = await cli(['rollout', 'create', '--image', V1_FILE, '--select', 'gateway=hall-b-*', '--waves', '100%', '--token', OPERATOR, '--id', 'n-v1'], from(urls, 0));
  t.is(first.code, 0, JSON.stringify(result(first.lines)));
  t.is(docOf(first.lines).totals.succeeded, 16);
  await inventoryShows(t, urls[2]!, V1);
  const r = await cli(['rollout', 'create', '--image', V2_FILE, '--select', 'gateway=hall-b-*', '--waves', '50%,100%', '--token', OPERATOR, '--id', 'n-v2', '--max-message-bytes', '128'], from(urls, 0));
  t.is(r.code, 0, JSON.stringify(result(r.lines)));
  const d = docOf(r.lines);
  t.is(d.state, 'completed');
  t.is(d.image.parts, 3);
  t.deepEqual(d.waves.map((w) => w.targets.length), [8, 8]);
  t.is(d.totals.succeeded, 16);
  await inventoryShows(t, urls[1]!, V2);
  t.deepEqual(await jobTokens(t, urls[2]!, 'n-v2'), GATEWAYS.map((gw, i) => `n-v2:${i < 2 ? 0 : 1}:${gw}:bus`).sort());
});
