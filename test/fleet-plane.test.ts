/**
 * The gateway's side of rollouts in the MQTT job plane (src/gateway/mqtt/job-commands.ts with the fleet
 * hooks): a job of a rollout still QUEUED when its rollout stops running that wave is cancelled before it
 * starts; other jobs are left alone. A fake job service, no broker: the rollout documents are handed in.
 */
import test from 'ava';
import type { JobRecord, JobService, JobSubmitter } from '../src/gateway/jobs/types.js';
import { MqttJobCommands, type JobBridge } from '../src/gateway/mqtt/job-commands.js';

function job(id: string, state: 'QUEUED' | 'IN_PROGRESS', clientToken: string | null): JobRecord {
  return { id, link: 'bus', image: { name: 'x', sha256: 'a'.repeat(64), size: 1, app_name: null }, options: {}, state, targets: [], submitted_by: { name: 'ops', role: 'operator', via: 'mqtt' }, client_token: clientToken, submitted_ts: 1, started_ts: null, finished_ts: null, reason: null, revision: 1 } as JobRecord;
}

test('queued jobs of a rollout that no longer runs their wave are cancelled; running ones, current ones and other jobs are not', async (t) => {
  const jobs = new Map<string, JobRecord>([
    ['j-1', job('j-1', 'QUEUED', 'r-1:0:gw:bus')],
    ['j-2', job('j-2', 'QUEUED', 'r-1:1:gw:bus')],
    ['j-3', job('j-3', 'IN_PROGRESS', 'r-1:0:gw:bus')],
    ['j-4', job('j-4', 'QUEUED', 'mine')],
    ['j-5', job('j-5', 'QUEUED', 'r-10:0:gw:bus')],
  ]);
  const cancelled: Array<{ id: string; by: JobSubmitter }> = [];
  const service = {
    list: (o: { state?: string }) => [...jobs.values()].filter((j) => !o.state || j.state === o.state),
    cancel: async (id: string, by: JobSubmitter) => {
      cancelled.push({ id, by });
      return { ok: true, value: jobs.get(id)! };
    },
  } as unknown as JobService;
  const noop = (): void => {};
  const bridge = { onCommands: () => noop, publishAnswer: noop, publishRetained: noop, clearRetained: noop, publishEvent: noop, setDeviceResolver: noop } as unknown as JobBridge;
  const plane = new MqttJobCommands({ bridge, topics: { prefix: 'hsx', gatewayId: 'gw' }, jobs: service, commands: false, tokens: null, audit: { record: noop } as never, imagesDir: undefined });

  t.is(await plane.cancelStaleRolloutJobs('r-1', { state: 'running', current_wave: 1 }), 1, 'wave 0 is over: its queued job goes');
  t.deepEqual(cancelled.map((c) => c.id), ['j-1']);
  t.deepEqual(cancelled[0]!.by, { name: 'fleet', role: 'operator', via: 'mqtt' });
  cancelled.splice(0);
  jobs.get('j-1')!.state = 'CANCELED' as never;
  t.is(await plane.cancelStaleRolloutJobs('r-1', { state: 'paused', current_wave: 1 }), 1, 'paused: the current wave\'s queued job goes too');
  t.deepEqual(cancelled.map((c) => c.id), ['j-2']);
  cancelled.splice(0);
  t.is(await plane.cancelStaleRolloutJobs('r-10', null), 1, 'an invalid or cleared document: its queued jobs go');
  t.deepEqual(cancelled.map((c) => c.id), ['j-5'], 'r-1 is not a prefix match for r-10, and a job of no rollout is never touched');
});
