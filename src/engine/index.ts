/**
 * The provisioning engine (docs/provisioning.md): pure logic, no Node I/O. Everything other
 * layers need is exported here.
 */
export * from './ports.js';
export { ProvisioningEngine } from './engine.js';
export type { EngineOptions, LoadOptions, BeginOptions, WriteAck, TaskInfo, SessionInfo, EngineResources, StagedLoad, UpdatePolicy } from './engine.js';
export { DeviceIntake, runningOf } from './intake.js';
export { DEFAULT_CODEC_CAPS } from './intake.js';
export type { CodecCaps, IntakeOptions, IntakeAnnounce, IntakeOpen, IntakeOutcome, IntakeVerdict, RunningImage } from './intake.js';
export { engineError, fromHxeError } from './errors.js';
export type { EngineError, EngineErrorCode, EngineErrorWhere } from './errors.js';
export { engineConfigSchema, validateEngineConfig, EngineConfigValidationError } from './config.js';
export type { EngineConfig, EngineConfigInput, EngineConfigError } from './config.js';
export { systemClock, FakeClock } from './clock.js';
export { CollectingEventSink, nullEventSink } from './events.js';
export { InMemoryImageStore, InMemoryValueStore, StoreError } from './stores.js';
export { LoadStateMachine, TRANSITIONS, canTransition } from './state.js';
export type { LoadState, StateChange, StateListener } from './state.js';
export { InProcessVmLoader, ARENA_KINDS } from './vm.js';
export type { VmLoader, VmTask, VmUsage, ArenaKind, ArenaBlock, ArenaUsage, InProcessVmOptions } from './vm.js';
export { MetadataRegistry, oidOf, isPersistedValue, valueSchemaOf, rangeCheck } from './registry.js';
export type { RegistryLimits, RegisteredValue, RegisteredCommand, RegisteredMailbox, RegistryCounts } from './registry.js';
export { assignInstanceName, fallbackAppName, trimUtf8 } from './naming.js';
export type { InstanceName } from './naming.js';
export { capabilityGate, budgetGate, checkBudgets, capabilityNames, CAPABILITY_BITS } from './gates.js';
export type { GateContext, PreRegistrationGate } from './gates.js';
