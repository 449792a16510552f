/** The gateway's event bus: see bus.ts. */
export { EventBus, type EventBusOptions, type BusStats } from './bus.js';
export { Subscription, type SubscribeOptions, type SubscriptionMetrics, type CloseReason } from './subscription.js';
export { eventJson } from './wire.js';
export { ProgressCoalescer, progressKey, progressPercent } from './coalescer.js';
export {
  DEFAULT_BUS_CONFIG,
  PROGRESS_TYPE,
  isTerminal,
  isDroppable,
  type BusEvent,
  type BusInput,
  type EventBusConfig,
} from './types.js';
