/**
 * Job events on the gateway's event bus: the one mapping from a `JobEvent` (what the job service
 * tells its watchers) to a bus event, used by the gateway (which publishes every job event on the
 * bus, so the control port's `job.watch` is an event subscription filtered to `job.*`) and by the
 * MQTT bridge alike. Shapes: docs/executive_protocol.md, "Jobs".
 *
 * - `job.submitted`, `job.started`, `job.finished`, `job.canceled`: `data = {job_id, state, job}`
 *   (the whole record, so a watcher always holds the latest state).
 * - `job.target`: `data = {job_id, state, target, job}` (`target` is the target's record that changed).
 * - `job.progress`: `data = {job_id, target, acked_bytes, total_bytes, percent}`, small: it is the
 *   frequent one, and carries no record.
 *
 * Job events concern no task: `pid` and `phase` are null.
 */
import type { BusInput } from '../events/types.js';
import type { JobEvent } from './types.js';

/** The category a watcher subscribes to: every job event's type starts with `job.`. */
export const JOB_EVENT_CATEGORY = 'job';

/** The job id a bus event concerns (`data.job_id`), or null when it is not a job event. */
export function jobIdOf(data: Record<string, unknown>): string | null {
  const id = data['job_id'];
  return typeof id === 'string' ? id : null;
}

export function jobEventToBus(e: JobEvent): BusInput {
  const base = { pid: null, phase: null } as const;
  switch (e.type) {
    case 'job.progress': {
      const percent = e.total_bytes > 0 ? Math.max(0, Math.min(100, Math.floor((e.acked_bytes * 100) / e.total_bytes))) : null;
      return {
        ...base,
        type: e.type,
        data: { job_id: e.job.id, target: e.target, acked_bytes: e.acked_bytes, total_bytes: e.total_bytes, percent },
      };
    }
    case 'job.target':
      return { ...base, type: e.type, data: { job_id: e.job.id, state: e.job.state, target: e.target, job: e.job } };
    default:
      return { ...base, type: e.type, data: { job_id: e.job.id, state: e.job.state, job: e.job } };
  }
}
