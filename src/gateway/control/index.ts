/** The control server (HSX executive protocol over TCP): see server.ts and docs/executive_protocol.md. */
export { ControlServer, commandRoles, controlOptionsFromConfig, TOKENS_ENV, DEFAULT_CONTROL_PORT } from './server.js';
export type { ControlServerOptions, ControlServerError } from './server.js';
export { DEFAULT_CONTROL_LIMITS } from './limits.js';
export type { ControlLimits } from './limits.js';
export { TokenStore, parseTokenEnv, sha256Hex, roleAllows, isLoopbackHost, ROLES } from './auth.js';
export type { Role, TokenEntry, Identity } from './auth.js';
export { ControlClient, runClientCommand, parseHostPort, DEFAULT_CONNECT, CLIENT_TOKEN_ENV } from './client.js';
export type { ClientError, Reply } from './client.js';
export type { ControlEngine, TaskInfoLike } from './engine-port.js';
