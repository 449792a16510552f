/**
 * mulberry32: a small, fast, seeded generator of floats in [0, 1); the same seed always gives the
 * same sequence, so a failing run can be replayed. Not for anything that needs unpredictability.
 * Used by both fault injectors: persist's power-fail tearing and link's CAN frame loss (link may
 * import persist, not the reverse). It stays in persist, not engine, because persist's runtime
 * imports are self-contained (the crash test runs src/persist alone in a child process).
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
