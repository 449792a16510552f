import { seededRandom } from './seeded-random.js';
import type { BlockDevice, RawAccess } from './block-device.js';

/**
 * Power-fail injection. A FaultPlan numbers every erase and program issued through the devices
 * it wraps (flash and FRAM share one plan, so a commit's operations are counted across both).
 * At operation `failAt` the power goes: the operation does not happen ('none'), or happens only
 * partly ('prefix': the first half of the bytes land; 'bits': for flash only some of the bits
 * get cleared by a program or set by an erase, for FRAM a prefix plus one half-written byte).
 * Every later operation fails too, as it would on a dead device. Tests then "reboot" by attaching
 * fresh device models to the same bytes.
 */
export type TearMode = 'none' | 'prefix' | 'bits';

export class PowerFail extends Error {
  constructor(readonly opIndex: number, readonly tear: TearMode, readonly what: string) {
    super(`power failed at operation ${opIndex} (${what}, tear=${tear})`);
    this.name = 'PowerFail';
  }
}

export class FaultPlan {
  /** Operations issued so far (the failing one included). */
  ops = 0;
  tripped = false;
  readonly log: string[] = [];
  constructor(readonly failAt: number | null = null, readonly tear: TearMode = 'none', readonly seed = 1) {}

  /** Count one operation; true when this one is the one the power fails on. */
  next(what: string): boolean {
    if (this.tripped) throw new PowerFail(this.ops, this.tear, `${what} after power loss`);
    this.ops++;
    this.log.push(what);
    if (this.failAt !== null && this.ops === this.failAt) {
      this.tripped = true;
      return true;
    }
    return false;
  }

  /** A generator seeded by the plan's seed and how far it has got, so each tear is reproducible. */
  random(): () => number {
    return seededRandom(this.seed ^ (this.ops * 0x9e3779b9));
  }
}

interface Bumpable {
  bumpEraseCount(sector: number): number;
}

/** Wraps a device model; counts and, when the plan says so, tears its writes. */
export class FaultyDevice implements BlockDevice {
  constructor(private readonly inner: BlockDevice & RawAccess, readonly plan: FaultPlan, private readonly label: string) {}

  get kind() { return this.inner.kind; }
  get size() { return this.inner.size; }
  get eraseSize() { return this.inner.eraseSize; }
  get programSize() { return this.inner.programSize; }
  get needsErase() { return this.inner.needsErase; }
  get sectorCount() { return this.inner.sectorCount; }
  get endurance() { return this.inner.endurance; }
  read(offset: number, length: number) { return this.inner.read(offset, length); }
  view(offset: number, length: number) { return this.inner.view(offset, length); }
  eraseCount(sector: number) { return this.inner.eraseCount(sector); }
  sync(offset: number, length: number) {
    if (this.plan.tripped) return Promise.reject(new PowerFail(this.plan.ops, this.plan.tear, 'sync after power loss'));
    return this.inner.sync(offset, length);
  }
  close() { this.inner.close(); }

  program(offset: number, data: Uint8Array): void {
    if (!this.plan.next(`${this.label}.program@${offset}+${data.length}`)) {
      this.inner.program(offset, data);
      return;
    }
    // Validate as the device would (alignment, erased state) before tearing, so a torn write is
    // always a torn *legal* write.
    if (this.plan.tear !== 'none') {
      const before = this.inner.read(offset, data.length);
      this.inner.program(offset, data);
      const raw = this.inner.rawData();
      raw.set(before, offset);
      this.tearProgram(raw, offset, data);
    }
    throw new PowerFail(this.plan.ops, this.plan.tear, `${this.label}.program@${offset}`);
  }

  erase(offset: number, length: number): void {
    if (!this.plan.next(`${this.label}.erase@${offset}+${length}`)) {
      this.inner.erase(offset, length);
      return;
    }
    if (this.plan.tear !== 'none' && this.inner.needsErase) {
      const raw = this.inner.rawData();
      const bump = (this.inner as unknown as Partial<Bumpable>).bumpEraseCount;
      for (let s = offset / this.eraseSize; s < (offset + length) / this.eraseSize; s++) bump?.call(this.inner, s);
      if (this.plan.tear === 'prefix') {
        raw.fill(0xff, offset, offset + Math.floor(length / 2));
      } else {
        const rnd = this.plan.random();
        for (let i = offset; i < offset + length; i++) raw[i] = raw[i]! | Math.floor(rnd() * 256);
      }
    }
    throw new PowerFail(this.plan.ops, this.plan.tear, `${this.label}.erase@${offset}`);
  }

  private tearProgram(raw: Uint8Array, offset: number, data: Uint8Array): void {
    const half = Math.floor(data.length / 2);
    const flash = this.inner.needsErase;
    if (this.plan.tear === 'prefix' || !flash) {
      for (let i = 0; i < half; i++) raw[offset + i] = flash ? raw[offset + i]! & data[i]! : data[i]!;
      if (!flash && this.plan.tear === 'bits' && half < data.length) {
        raw[offset + half] = (data[half]! & 0xf0) | (raw[offset + half]! & 0x0f);
      }
      return;
    }
    // Flash, partially cleared page: each byte gets only some of the bits the program wanted cleared.
    const rnd = this.plan.random();
    for (let i = 0; i < data.length; i++) raw[offset + i] = raw[offset + i]! & (data[i]! | Math.floor(rnd() * 256));
  }
}
