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

/** Everything a gateway publishes, for `mosquitto_sub -t`. */
export const allTopics = (t: TopicRoot): string => `${root(t)}/#`;
