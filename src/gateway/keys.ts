/**
 * Signing keys on disk (docs/security.md, "Key handling"). The crypto is in src/hxe/signature.ts;
 * this module is the file I/O around it.
 *
 * A keys directory holds:
 *   NAME.pub     Ed25519 public key, PEM (SPKI) — trusted, under the name NAME
 *   NAME.key     Ed25519 private key, PEM (PKCS#8), mode 0600 — never read by the verifier
 *   revoked.txt  key ids (16 hex digits) one per line, `#` starts a comment; revocation wins over trust
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { err, ok, type Result } from '../hxe/result.js';
import { generateSigningKey, keyIdOf, NO_KEYS, type TrustedKeys } from '../hxe/signature.js';
import type { SignaturePolicy } from '../engine/policy.js';

export const REVOCATION_FILE = 'revoked.txt';

export interface KeyError {
  code: 'EKEY';
  file: string;
  message: string;
}

const keyErr = (file: string, message: string): { ok: false; error: KeyError } => err({ code: 'EKEY', file, message: `${file}: ${message}` });

export interface LoadedKeys extends TrustedKeys {
  /** Key id → the file it came from, for messages. */
  files: ReadonlyMap<string, string>;
}

function readPublicKey(file: string): Result<KeyObject, KeyError> {
  let key: KeyObject;
  try {
    key = createPublicKey(readFileSync(file));
  } catch (e) {
    return keyErr(file, `not a PEM public key (${(e as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') return keyErr(file, `expected an Ed25519 key, found ${key.asymmetricKeyType}`);
  return ok(key);
}

/** Parses a revocation list; every bad line is an error naming file and line. */
export function parseRevocationList(text: string, file: string): Result<Set<string>, KeyError> {
  const out = new Set<string>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').replace(/#.*/, '').trim();
    if (!line) continue;
    if (!/^[0-9a-fA-F]{16}$/.test(line)) return keyErr(`${file}:${i + 1}`, `expected a key id of 16 hex digits, got "${line}"`);
    out.add(line.toLowerCase());
  }
  return ok(out);
}

/** Loads the trusted public keys and the revocation list of a keys directory. */
export function loadTrustedKeys(dir: string): Result<LoadedKeys, KeyError> {
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (e) {
    return keyErr(dir, `cannot read keys directory (${(e as Error).message})`);
  }
  const keys = new Map<string, { name: string; publicKey: KeyObject }>();
  const files = new Map<string, string>();
  for (const n of names.filter((f) => f.endsWith('.pub'))) {
    const file = join(dir, n);
    const key = readPublicKey(file);
    if (!key.ok) return key;
    const id = keyIdOf(key.value);
    const clash = files.get(id);
    if (clash) return keyErr(file, `same key (id ${id}) as ${clash}`);
    keys.set(id, { name: basename(n, '.pub'), publicKey: key.value });
    files.set(id, file);
  }
  let revoked = new Set<string>();
  const revFile = join(dir, REVOCATION_FILE);
  if (existsSync(revFile)) {
    const r = parseRevocationList(readFileSync(revFile, 'utf8'), revFile);
    if (!r.ok) return r;
    revoked = r.value;
  }
  return ok({ keys, revoked, files });
}

/**
 * Loads a private signing key. Like ssh, a key that group or others can read is refused: a
 * signing key that leaked is a key every device trusts until it is revoked.
 */
export function loadPrivateKey(file: string): Result<KeyObject, KeyError> {
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (e) {
    return keyErr(file, `cannot read private key (${(e as Error).message})`);
  }
  if ((mode & 0o077) !== 0) {
    return keyErr(file, `private key is accessible by group/others (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(readFileSync(file));
  } catch (e) {
    return keyErr(file, `not a PEM private key (${(e as Error).message})`);
  }
  if (key.asymmetricKeyType !== 'ed25519') return keyErr(file, `expected an Ed25519 key, found ${key.asymmetricKeyType}`);
  return ok(key);
}

/** Writes `bytes` to a new file with `mode` from the first byte on; never overwrites. */
function writeNew(file: string, text: string, mode: number): void {
  const fd = openSync(file, 'wx', mode);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  chmodSync(file, mode); // the umask may have narrowed it; make the mode exact
}

export interface GeneratedKey {
  keyId: string;
  privateKeyFile: string;
  publicKeyFile: string;
}

/** Generates an Ed25519 key pair into `dir` as NAME.key (0600) and NAME.pub (0644). */
export function generateKeyFiles(dir: string, name: string): Result<GeneratedKey, KeyError> {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name) || name.startsWith('.')) {
    return keyErr(name, 'key name must be 1-64 characters of [A-Za-z0-9_.-], not starting with a dot');
  }
  const privateKeyFile = join(dir, `${name}.key`);
  const publicKeyFile = join(dir, `${name}.pub`);
  for (const f of [privateKeyFile, publicKeyFile]) if (existsSync(f)) return keyErr(f, 'already exists; refusing to overwrite a key');
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    return keyErr(dir, `cannot create directory (${(e as Error).message})`);
  }
  const k = generateSigningKey();
  try {
    writeNew(privateKeyFile, k.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
    writeNew(publicKeyFile, k.publicKey.export({ type: 'spki', format: 'pem' }) as string, 0o644);
  } catch (e) {
    return keyErr(dir, `cannot write key files (${(e as Error).message})`);
  }
  return ok({ keyId: k.keyId, privateKeyFile, publicKeyFile });
}

/**
 * The engine's signature policy from the gateway config's [policy] table: `policyGate(…)` of the
 * result goes into the engine's `gates`. Requiring signatures without a keys directory is an
 * error (every image would be refused).
 */
export function loadSignaturePolicy(policy: { require_signature: boolean; keys_dir?: string | undefined; anti_downgrade?: boolean }):
  Result<SignaturePolicy, KeyError> {
  const antiDowngrade = policy.anti_downgrade ?? true;
  if (!policy.keys_dir) {
    if (policy.require_signature) return keyErr('policy.keys_dir', 'require_signature = true needs keys_dir (the trusted public keys)');
    return ok({ requireSignature: false, trustedKeys: NO_KEYS, antiDowngrade });
  }
  const keys = loadTrustedKeys(policy.keys_dir);
  if (!keys.ok) return keys;
  return ok({ requireSignature: policy.require_signature, trustedKeys: keys.value, antiDowngrade });
}
