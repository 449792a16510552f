/**
 * MQTT topic layout (docs/mqtt.md). One function per topic so the bridge, the tests and the
 * demo's "topics to watch" line can never disagree on a spelling.
 */
export interface TopicRoot {
  prefix: string;
  gatewayId: string;
}

const root = (t: TopicRoot): string => `${t.prefix}/${t.gatewayId}`;

/** Retained availability: `online` JSON, replaced by the Last Will `offline` when the gateway dies. */
export const statusTopic = (t: TopicRoot): string => `${root(t)}/status`;

/** One topic per event type; `device` is absent for gateway-level events. */
export function eventTopic(t: TopicRoot, type: string, device?: string): string {
  const suffix = type.replace(/\./g, '/');
  return device === undefined ? `${root(t)}/events/${suffix}` : `${root(t)}/device/${device}/events/${suffix}`;
}

/** Retained: the last image that reached READY on a device. */
export const deviceStateTopic = (t: TopicRoot, device: string): string => `${root(t)}/device/${device}/state`;

/** Retained: a device's live value `<group>:<id>` (decimal), `{value, f16, unit, name, ts}`. */
export const deviceValueTopic = (t: TopicRoot, device: string, group: number, id: number): string => `${root(t)}/device/${device}/values/${group}:${id}`;

/** Every value of one device (`+`: of every device), for `mosquitto_sub -t`. */
export const deviceValuesFilter = (t: TopicRoot, device: string): string => `${root(t)}/device/${device}/values/#`;

/** Everything a gateway publishes, for `mosquitto_sub -t`. */
export const allTopics = (t: TopicRoot): string => `${root(t)}/#`;

// Jobs (docs/mqtt.md "Jobs"): the command plane's requests and answers, and the retained job documents.

const jobsRoot = (t: TopicRoot): string => `${root(t)}/jobs`;

/** Requests to submit a job (JSON, with `token`); only the gateway's client should read it. */
export const jobSubmitTopic = (t: TopicRoot): string => `${jobsRoot(t)}/submit`;

/** Answers to submits, by verdict. */
export const jobSubmitAnswerTopic = (t: TopicRoot, verdict: 'accepted' | 'rejected'): string => `${jobSubmitTopic(t)}/${verdict}`;

/** Requests to cancel job `id`. */
export const jobCancelTopic = (t: TopicRoot, id: string): string => `${jobsRoot(t)}/${id}/cancel`;

/** The subscription filter for every cancel request. */
export const jobCancelFilter = (t: TopicRoot): string => jobCancelTopic(t, '+');

/** Answers to a cancel of job `id`, by verdict. */
export const jobCancelAnswerTopic = (t: TopicRoot, id: string, verdict: 'accepted' | 'rejected'): string => `${jobCancelTopic(t, id)}/${verdict}`;

/** Retained: the job's record (JSON), replaced on every change; cleared (empty retained) when the job is forgotten. */
export const jobDocTopic = (t: TopicRoot, id: string): string => `${jobsRoot(t)}/${id}`;

/** The job id of a cancel request's topic, or null when the topic is not one. */
export function parseJobCancelTopic(t: TopicRoot, topic: string): string | null {
  const head = `${jobsRoot(t)}/`;
  if (!topic.startsWith(head) || !topic.endsWith('/cancel')) return null;
  const id = topic.slice(head.length, topic.length - '/cancel'.length);
  return id.length > 0 && !/[/+#]/.test(id) ? id : null;
}

/** A topic a client publishes a job command to (submit, or a cancel of one job). */
export const isJobCommandTopic = (t: TopicRoot, topic: string): boolean => topic === jobSubmitTopic(t) || parseJobCancelTopic(t, topic) !== null;

// Values (docs/mqtt.md "Value commands"): `val.set` requests and their answers.

/** Requests to set a device's value (JSON, with `token`); only the gateway's client should read it. */
export const valueSetTopic = (t: TopicRoot): string => `${root(t)}/values/set`;

/** Answers to value sets, by verdict. */
export const valueSetAnswerTopic = (t: TopicRoot, verdict: 'accepted' | 'rejected'): string => `${valueSetTopic(t)}/${verdict}`;

/** A topic a client publishes a command to: a job command or a value set (they carry tokens). */
export const isCommandTopic = (t: TopicRoot, topic: string): boolean => isJobCommandTopic(t, topic) || topic === valueSetTopic(t);

/** A device name made safe as one topic level (no `/`, `+`, `#`, NUL). */
export const topicLevel = (s: string): string => (s.length === 0 ? '_' : s.replace(/[/+#\u0000]/g, '_'));

/** Retained: what a master link's last scan found on one target (docs/jobs.md "Inventory"). */
export const deviceInventoryTopic = (t: TopicRoot, device: string): string => `${root(t)}/device/${device}/inventory`;
