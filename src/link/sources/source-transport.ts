/**
 * Filesystem and SD-manifest sources behind the common Transport interface, registered by
 * name (`fs`, `sd`), so the boot sequence treats them like any other link: open it, receive
 * what it delivers, close it. Sources are read-only: `send` is refused.
 */
import { EventEmitter } from 'node:events';
import { registerTransport, type Transport, type TransportStatus } from '../transport.js';
import { loadManifestImages } from './sd-manifest.js';
import { loadPreloadDir } from './preload-dir.js';
import type { SourcedImage, SourceProblem } from './sourced-image.js';

export type SourceDelivery = { kind: 'image'; image: SourcedImage } | { kind: 'problem'; problem: SourceProblem };

type Loader = () => { images: SourcedImage[]; problems: SourceProblem[] } | { fatal: string };

export class ImageSourceTransport extends EventEmitter implements Transport<never, SourceDelivery> {
  private state: TransportStatus = { state: 'closed' };
  private readonly handlers = new Set<(m: SourceDelivery) => void>();

  constructor(readonly name: string, private readonly load: Loader) {
    super();
  }

  /** Reads the source and delivers every image and problem to the receivers, in boot order. */
  async open(): Promise<void> {
    this.setStatus({ state: 'opening' });
    const r = this.load();
    if ('fatal' in r) {
      this.setStatus({ state: 'error', detail: r.fatal });
      throw new Error(r.fatal);
    }
    for (const problem of r.problems) this.deliver({ kind: 'problem', problem });
    for (const image of r.images) this.deliver({ kind: 'image', image });
    this.setStatus({ state: 'open', counters: { images: r.images.length, problems: r.problems.length } });
  }

  async send(): Promise<void> {
    throw new Error(`${this.name}: an image source is read-only`);
  }

  receive(handler: (m: SourceDelivery) => void): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }

  async close(): Promise<void> {
    this.setStatus({ state: 'closed' });
  }

  status(): TransportStatus {
    return this.state;
  }

  private deliver(m: SourceDelivery): void {
    for (const h of this.handlers) h(m);
  }

  private setStatus(s: TransportStatus): void {
    this.state = s;
    this.emit('status', s);
  }
}

export function preloadDirSource(dir: string): ImageSourceTransport {
  return new ImageSourceTransport(`fs:${dir}`, () => loadPreloadDir(dir));
}

export function sdManifestSource(file: string): ImageSourceTransport {
  return new ImageSourceTransport(`sd:${file}`, () => {
    const r = loadManifestImages(file);
    return r.ok ? r.value : { fatal: r.error.message };
  });
}

let registered = false;
/** Registers `fs` ({ dir }) and `sd` ({ manifest }) with the transport registry (idempotent). */
export function registerSourceTransports(): void {
  if (registered) return;
  registered = true;
  registerTransport('fs', (o) => preloadDirSource(String(o['dir'])) as unknown as Transport<unknown, unknown>);
  registerTransport('sd', (o) => sdManifestSource(String(o['manifest'])) as unknown as Transport<unknown, unknown>);
}
