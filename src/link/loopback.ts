/**
 * Whether a host names this machine only (loopback): what decides that a listening socket needs no
 * token (the control port, the live page) or no explicit permission to be reached from elsewhere
 * (the virtual CAN hub). Accepts `localhost`, 127.0.0.0/8, `::1` (also written out or in brackets)
 * and IPv4-mapped 127.x addresses. A small module of its own so the config reader can ask without
 * loading a transport.
 */
import { isIP } from 'node:net';

export function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) {
    const l = h.toLowerCase();
    if (l === '::1' || l === '0:0:0:0:0:0:0:1') return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(l);
    return mapped !== null && mapped[1]!.startsWith('127.');
  }
  return false;
}
