/**
 * An event's JSON text, made once and shared by every consumer that writes it out (each control
 * subscriber, the MQTT bridge...). Serializing the same envelope once per subscriber was the
 * largest per-event cost of a fan-out. Envelopes are not changed after the bus publishes them,
 * so the text stays right; the cache holds them weakly, so it never keeps an event alive.
 */
import type { BusEvent } from './types.js';

const texts = new WeakMap<BusEvent, string>();

export function eventJson(ev: BusEvent): string {
  let text = texts.get(ev);
  if (text === undefined) {
    text = JSON.stringify(ev);
    texts.set(ev, text);
  }
  return text;
}
